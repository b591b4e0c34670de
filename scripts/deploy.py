"""Register the deployments of prefect.yaml: their work pools with a locked job template, then
`prefect --no-prompt deploy --all`, with one fix.

Run from the repository root (`make ui` does): `python scripts/deploy.py`. Extra arguments go to
`prefect deploy`. Every work pool prefect.yaml names is created (or updated) as a process pool
whose job template lets no flow run or deployment replace the worker's command, environment or
working directory (`tinym2net.workpool`). The fix: after creating each deployment, `prefect
deploy` asks which workers of its pool are online and prefect 3.8.8's client sends `"limit": null,
"offset": null`, which the server rejects (422) under the pinned fastapi 0.154.0, so `prefect
deploy --all` stops after the first deployment. Here the client sends integers instead; everything
else is the real command.
"""
import sys
from pathlib import Path

import yaml
from prefect.cli import app
from prefect.client.orchestration import PrefectClient, get_client
from prefect.settings import PREFECT_SERVER_API_DEFAULT_LIMIT

from tinym2net import workpool

_read_workers_for_work_pool = PrefectClient.read_workers_for_work_pool


async def read_workers_for_work_pool(self, work_pool_name, worker_filter=None, offset=None, limit=None):
    return await _read_workers_for_work_pool(self, work_pool_name, worker_filter=worker_filter, offset=offset or 0,
                                             limit=limit if limit is not None else PREFECT_SERVER_API_DEFAULT_LIMIT.value())


PrefectClient.read_workers_for_work_pool = read_workers_for_work_pool


def work_pools(path: Path) -> set[str]:
    """The work pools the deployments of prefect.yaml run on."""
    spec = yaml.safe_load(path.read_text())
    return {d["work_pool"]["name"] for d in spec.get("deployments") or [] if (d.get("work_pool") or {}).get("name")}


if __name__ == "__main__":
    with get_client(sync_client=True) as client:
        for pool in sorted(work_pools(Path("prefect.yaml"))):
            workpool.ensure(client, pool)
    sys.argv = ["prefect", "--no-prompt", "deploy", "--all", *sys.argv[1:]]
    app()
