#!/usr/bin/env python3
"""LangBot's own state store on the bench's workloads, for `bench --langbot`.

Runs LangBot's `PersistentStateStore` (its SQLAlchemy code, read from a
LangBot git checkout at a given ref, not copied into this repository)
against the bench's database, so that the Rust store and LangBot's are
measured in the same run on the same server. Only LangBot's two pydantic
model modules are replaced by stand-ins: the store reads plain attributes
from them, and they pull in the plugin SDK.

Prints one JSON object: ops/s per workload, and e_concurrent's errors and
final rows. Needs `pip install -r bench/langbot/requirements.txt`.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from langbot_source import materialise, sqlalchemy_url  # noqa: E402

# LangBot's files the bench runs, as they sit in its repository.
REAL = [
    "src/langbot/pkg/agent/runner/persistent_state_store.py",
    "src/langbot/pkg/agent/runner/state_scope.py",
    "src/langbot/pkg/entity/persistence/agent_runner_state.py",
    "src/langbot/pkg/entity/persistence/base.py",
]
# Its pydantic models, which the store only reads attributes of.
STAND_INS = {
    "src/langbot/pkg/agent/runner/descriptor.py": "AgentRunnerDescriptor = object\n",
    "src/langbot/pkg/agent/runner/host_models.py": "AgentEventEnvelope = AgentBinding = object\n",
}


def ns(**kw):
    return types.SimpleNamespace(**kw)


def identity(conversation: str, actor: str):
    """Event, binding and descriptor as the store reads them (the bench's
    context: bot-1, ws-1, the actor, subject doc/d-1)."""
    event = ns(
        bot_id="bot-1", workspace_id="ws-1", conversation_id=conversation, thread_id=None,
        actor=ns(actor_type="user", actor_id=actor),
        subject=ns(subject_type="doc", subject_id="d-1"),
    )
    binding = ns(
        binding_id="pipeline-bench", scope=ns(scope_type=None, scope_id=None),
        state_policy=ns(enable_state=True,
                        state_scopes=["conversation", "actor", "subject", "runner"]),
    )
    descriptor = ns(id="plugin:langbot/local-agent/default")
    return event, binding, descriptor


def value(i: int, generation: int):
    return {"i": i, "gen": generation, "note": "conversation memo " * 4, "tags": ["a", "b", "c"]}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--git", required=True, help="LangBot's git directory")
    p.add_argument("--ref", default="dev/4.11.x")
    p.add_argument("--url", required=True, help="the bench's database URL")
    p.add_argument("--scale", type=int, default=1, help="divide every size by this")
    p.add_argument("--tag", default="0", help="makes this run's scopes its own")
    args = p.parse_args()

    sys.path.insert(0, materialise(args.git, args.ref, REAL, STAND_INS))
    from sqlalchemy.ext.asyncio import create_async_engine
    from langbot.pkg.agent.runner.persistent_state_store import PersistentStateStore
    from langbot.pkg.agent.runner.state_scope import build_state_scope_key

    engine = create_async_engine(sqlalchemy_url(args.url))
    store = PersistentStateStore(engine)
    tag, scale = args.tag, args.scale
    out = {}

    def rate(name, n, started):
        out[name] = round(n / (time.perf_counter() - started), 1)

    async def apply(ids, scope, key, v):
        ok, error = await store.apply_update_from_event(*ids, scope, key, v)
        if not ok:
            raise RuntimeError(error)

    # a_insert, a_overwrite, b_get on a fresh conversation.
    ids = identity(f"a-langbot-{tag}", "u-1")
    scope_key = build_state_scope_key("conversation", *ids)
    n = 5000 // scale
    for name, generation in (("a_insert", 0), ("a_overwrite", 1)):
        started = time.perf_counter()
        for i in range(n):
            await apply(ids, "conversation", f"key-0-{i}", value(i, generation))
        rate(name, n, started)
    started = time.perf_counter()
    for i in range(n):
        assert await store.state_get(scope_key, f"key-0-{i}") is not None
    rate("b_get", n, started)

    # c_list: 1,000 actor keys, ten prefixes of 100.
    ids = identity("c", f"c-langbot-{tag}")
    for k in range(1000):
        await apply(ids, "actor", f"ns{k % 10}.{k // 10:03d}", value(k, 0))
    scope_key = build_state_scope_key("actor", *ids)
    n = 500 // scale
    started = time.perf_counter()
    for k in range(n):
        keys, has_more = await store.state_list(scope_key, f"ns{k % 10}.", 100)
        assert len(keys) == 100 and not has_more
    rate("c_list", n, started)

    # d_snapshot: ten keys in each scope.
    ids = identity(f"d-langbot-{tag}", f"d-langbot-{tag}")
    for scope in ("conversation", "actor", "subject", "runner"):
        for k in range(10):
            await apply(ids, scope, f"k{k}", value(k, 0))
    n = 1000 // scale
    started = time.perf_counter()
    for _ in range(n):
        snapshot = await store.build_snapshot_from_event(*ids)
        assert sum(len(s) for s in snapshot.values()) - 1 == 40
    rate("d_snapshot", n, started)

    # e_concurrent: 32 tasks x 200 sets on 50 shared keys.
    ids = identity("e", f"e-langbot-{tag}")
    per_task = 200 // scale
    errors = 0

    async def writer(task):
        nonlocal errors
        for i in range(per_task):
            try:
                await apply(ids, "actor", f"shared-{(task * 7 + i) % 50}", value(i, task))
            except Exception:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(t) for t in range(32)))
    rate("e_concurrent", 32 * per_task, started)
    keys, _ = await store.state_list(build_state_scope_key("actor", *ids), "shared-", 100)
    out["e_errors"] = errors
    out["e_final_rows"] = len(keys)
    await engine.dispose()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
