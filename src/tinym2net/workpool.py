"""Prefect process work pools whose job template cannot be used to run a command.

Prefect's default process template makes `command`, `env` and `working_dir` job variables, so
whoever can create or edit a flow run or a deployment can have the worker run any command (or
change its interpreter through the environment). Here they are not variables: the worker always
starts Prefect's own engine (`python -m prefect.engine`) with its own environment, and the server
refuses flow runs and deployments that set any job variable the template does not declare.
"""
from __future__ import annotations

import logging

from .errors import DataError

log = logging.getLogger(__name__)

LOCKED = ("command", "env", "working_dir")


def job_template() -> dict:
    """Prefect's process job template without the variables of LOCKED, refusing unknown ones."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    for key in LOCKED:
        template["job_configuration"].pop(key, None)
        template["variables"]["properties"].pop(key, None)
    template["variables"]["additionalProperties"] = False
    return template


def ensure(client, name: str) -> None:
    """Create the process work pool `name` with `job_template()`, or give an existing one that
    template (a worker started first creates its pool with Prefect's default)."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    template = job_template()
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            log.info("created Prefect work pool %r (process, locked job template)", name)
            return
        except ObjectAlreadyExists:  # a worker starting at the same moment created it
            pool = client.read_work_pool(name)
    if pool.type != "process":
        raise DataError(f"Prefect work pool {name!r} is of type {pool.type}, not process: name another pool")
    if pool.base_job_template != template:
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        log.info("locked the job template of Prefect work pool %r", name)
