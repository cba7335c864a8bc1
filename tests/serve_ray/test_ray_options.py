"""`emote serve --ray`'s options and the Serve deployment they make, without a cluster: ``--autoscale MIN..MAX``
and ``--sessions-per-replica`` parsing, the deployment's replicas, autoscaling, shutdown and router settings,
and :class:`LeastLoadedRouter` choosing the replica with the fewest ongoing requests among all of them.
"""

from __future__ import annotations

import asyncio
import re

import pytest

NO_RAY = "ray[serve] is not installed (pip install 'ray[serve]==2.60.0', or the project's ray extra)"
pytest.importorskip("ray", exc_type=ImportError, reason=NO_RAY)
pytest.importorskip("ray.serve", exc_type=ImportError, reason=NO_RAY)
pytest.importorskip("fastapi", exc_type=ImportError, reason=NO_RAY)

from ray.serve._private.common import DeploymentHandleSource, DeploymentID  # noqa: E402
from ray.serve.request_router import ReplicaID  # noqa: E402

from engine.cli import build_parser, main  # noqa: E402
from engine.serve.hub import ServeConfig  # noqa: E402
from engine.serve.ray_app import (  # noqa: E402
    AUTOSCALE_SHUTDOWN_S,
    SHUTDOWN_S,
    LeastLoadedRouter,
    build_app,
    parse_autoscale,
    replica_deployment,
    replicas_text,
)

pytestmark = pytest.mark.ray

DEPLOYMENT = DeploymentID(name="EmoteReplica", app_name="emote")


def test_autoscale_is_min_dot_dot_max():
    assert parse_autoscale("1..4") == (1, 4)
    assert parse_autoscale(" 2..2 ") == (2, 2)
    for text, error in [("4", "must be MIN..MAX"), ("1-4", "must be MIN..MAX"), ("..4", "must be MIN..MAX"),
                        ("1..", "must be MIN..MAX"), ("a..b", "must be MIN..MAX"), ("1..-4", "must be MIN..MAX"),
                        ("1.5..4", "must be MIN..MAX"), ("0..4", "MIN must be at least 1, got 0"),
                        ("3..2", "MAX must be at least MIN (3), got 2"), ("1..4²", "must be MIN..MAX")]:
        with pytest.raises(ValueError, match=re.escape(error)):
            parse_autoscale(text)


def test_serve_options_for_ray():
    parser = build_parser()
    args = parser.parse_args(["serve", "--ray", "--sessions-per-replica", "3", "--autoscale", "1..4"])
    assert args.max_sessions == 3 and args.autoscale == "1..4" and args.replicas is None
    assert parser.parse_args(["serve", "--max-sessions", "2"]).max_sessions == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--ray", "--replicas", "2", "--autoscale", "1..4"])


def test_bad_ray_options_are_one_line_errors(capsys):
    assert main(["serve", "--ray", "--model", "tiny", "--autoscale", "0..4"]) == 2
    assert main(["serve", "--ray", "--model", "tiny", "--autoscale", "4..1"]) == 2
    assert main(["serve", "--ray", "--model", "tiny", "--autoscale", "1:4"]) == 2
    assert main(["serve", "--model", "tiny", "--autoscale", "1..4"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["emote: error: --autoscale MIN must be at least 1, got 0",
                      "emote: error: --autoscale MAX must be at least MIN (4), got 1",
                      "emote: error: --autoscale must be MIN..MAX (e.g. 1..4), got '1:4'",
                      "emote: error: --replicas, --autoscale and --address need --ray"]


def test_a_fixed_replica_count():
    deployment = replica_deployment(ServeConfig(model="tiny", max_sessions=2), replicas=3, replica_cpus=0.5)
    config = deployment._deployment_config
    assert deployment.num_replicas == 3 and config.autoscaling_config is None
    assert deployment.max_ongoing_requests == 3  # the sessions plus one place for the busy answer
    assert deployment.ray_actor_options["num_cpus"] == 0.5 and "num_gpus" not in deployment.ray_actor_options
    assert config.graceful_shutdown_timeout_s == SHUTDOWN_S
    assert config.request_router_config.get_request_router_class() is LeastLoadedRouter
    assert replicas_text(3, None) == "3 replica(s)"


def test_autoscaling_between_min_and_max():
    deployment = replica_deployment(ServeConfig(model="tiny", max_sessions=4), autoscale=(2, 8))
    config = deployment._deployment_config
    scaling = config.autoscaling_config
    assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas) == (2, 2, 8)
    assert scaling.target_ongoing_requests == 3.0  # 3/4 of the sessions per replica
    assert scaling.upscale_delay_s < scaling.downscale_delay_s
    assert config.graceful_shutdown_timeout_s == AUTOSCALE_SHUTDOWN_S > SHUTDOWN_S
    assert deployment.max_ongoing_requests == 5
    assert config.request_router_config.get_request_router_class() is LeastLoadedRouter
    assert replicas_text(1, (2, 8)) == "replicas 2..8 (autoscaling)"


def test_a_replica_count_below_one_is_refused():
    with pytest.raises(ValueError, match="replicas must be at least 1, got 0"):
        build_app(ServeConfig(model="tiny"), replicas=0)


class FakeReplica:
    """The part of Serve's ``RunningReplica`` the router uses: an id, a capacity and a queue-length probe."""

    def __init__(self, name: str, ongoing: int, max_ongoing_requests: int):
        self.replica_id = ReplicaID(unique_id=name, deployment_id=DEPLOYMENT)
        self.ongoing, self.max_ongoing_requests = ongoing, max_ongoing_requests

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.ongoing


def choose(ongoing: list[int], max_ongoing_requests: int = 3, cached: int | None = None) -> str | None:
    """The replica (its index as a string) Serve's selection takes from :class:`LeastLoadedRouter`'s ranks."""

    async def run() -> str | None:
        router = LeastLoadedRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True)
        replicas = [FakeReplica(str(i), n, max_ongoing_requests) for i, n in enumerate(ongoing)]
        router.update_replicas(replicas)
        await asyncio.sleep(0)
        if cached is not None:  # stale cached lengths, as a proxy holds them between probes
            for replica in replicas:
                router.replica_queue_len_cache.update(replica.replica_id, cached)
        ranks = await router.choose_replicas(replicas)
        assert len(ranks) == 1 and sorted(r.replica_id.unique_id for r in ranks[0]) == [str(i) for i in
                                                                                         range(len(ongoing))]
        chosen = await router._select_from_candidate_replicas(ranks[0], 0)
        return None if chosen is None else chosen.replica_id.unique_id

    return asyncio.run(run())


def test_the_router_takes_the_least_loaded_of_all_replicas():
    # Sessions per replica 2, so 3 ongoing requests at most: a replica at 2 is full (it answers busy).
    for _ in range(10):  # the order within the rank is random; the choice is not
        assert choose([2, 2, 1, 2]) == "2"
        assert choose([2, 0, 1], cached=0) == "1"  # probed afresh, not the stale cache
    assert choose([2, 2, 2]) in {"0", "1", "2"}  # every replica full: one of them answers busy
    assert choose([3, 3]) is None  # every place taken: Serve backs off and retries
    assert asyncio.run(LeastLoadedRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN).choose_replicas([])) == []
