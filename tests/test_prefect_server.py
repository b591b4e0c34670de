"""The pinned prefect/fastapi pair starts a real Prefect server that answers its health check."""
import json
import subprocess
import time
import urllib.request

from conftest import free_port, venv_env


def test_prefect_server_starts_and_is_healthy(tmp_path):
    port = free_port()
    env = venv_env(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_UI_ENABLED="false")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, answer = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as resp:
                    answer = json.loads(resp.read())
                    break
            except OSError:
                time.sleep(1)
        assert answer is True, (tmp_path / "server.log").read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=5) as resp:
            assert json.loads(resp.read())
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
