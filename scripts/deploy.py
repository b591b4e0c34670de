"""Register the deployments of prefect.yaml: `prefect --no-prompt deploy --all`, with one fix.

Run from the repository root (`make ui` does): `python scripts/deploy.py`. Extra arguments go to
`prefect deploy`. The fix: after creating each deployment, `prefect deploy` asks which workers of
its pool are online and prefect 3.8.8's client sends `"limit": null, "offset": null`, which the
server rejects (422) under the pinned fastapi 0.154.0, so `prefect deploy --all` stops after the
first deployment. Here the client sends integers instead; everything else is the real command.
"""
import sys

from prefect.cli import app
from prefect.client.orchestration import PrefectClient
from prefect.settings import PREFECT_SERVER_API_DEFAULT_LIMIT

_read_workers_for_work_pool = PrefectClient.read_workers_for_work_pool


async def read_workers_for_work_pool(self, work_pool_name, worker_filter=None, offset=None, limit=None):
    return await _read_workers_for_work_pool(self, work_pool_name, worker_filter=worker_filter, offset=offset or 0,
                                             limit=limit if limit is not None else PREFECT_SERVER_API_DEFAULT_LIMIT.value())


PrefectClient.read_workers_for_work_pool = read_workers_for_work_pool

if __name__ == "__main__":
    sys.argv = ["prefect", "--no-prompt", "deploy", "--all", *sys.argv[1:]]
    app()
