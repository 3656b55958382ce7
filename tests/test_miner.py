"""The template miner: masking, grouping, merging, state, determinism, and accuracy on Loghub."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest

from backend.patterns import MASK, Cluster, MinerConfig, TemplateMiner, mask, mine, tokenize

LOGHUB = Path(__file__).resolve().parents[2] / "shared/data/loghub"
ROOT = Path(__file__).resolve().parents[1]

# Per-system GA floors, a little under what the default configuration reaches (see the bench:
# python bench/patterns_accuracy.py). drain3 as shipped: mean 0.855.
GA_FLOORS = {
    "Apache": 0.99,
    "BGL": 0.99,
    "HDFS": 0.99,
    "Hadoop": 0.98,
    "OpenSSH": 0.99,
    "OpenStack": 0.99,
    "Spark": 0.985,
    "Zookeeper": 0.98,
}


def loghub(system: str) -> tuple[list[str], list[str]]:
    path = LOGHUB / system / f"{system}_2k.log_structured_corrected.csv"
    if not path.is_file():
        pytest.fail(
            f"Loghub ground truth missing: {path} (the accuracy tests read ../shared/data/loghub "
            "next to the project; they do not skip)"
        )
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"].strip() for r in rows], [r["EventId"] for r in rows]


def grouping_accuracy(truth: Sequence[str], predicted: Sequence[int]) -> float:
    true_groups: dict[str, set[int]] = defaultdict(set)
    pred_groups: dict[int, set[int]] = defaultdict(set)
    for i, (t, p) in enumerate(zip(truth, predicted, strict=True)):
        true_groups[t].add(i)
        pred_groups[p].add(i)
    right = sum(len(m) for m in true_groups.values() if pred_groups[predicted[min(m)]] == m)
    return right / len(truth)


# -- masking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # numbers, negative numbers, floats
        ("retry 3 of -1 took 0.25", "retry <*> of <*> took <*>"),
        # hex
        ("register 0x1f3A at 0xdeadbeef", "register <*> at <*>"),
        ("commit 9f3a2b1c0d pushed", "commit <*> pushed"),
        # UUIDs
        ("run 550e8400-e29b-41d4-a716-446655440000 failed", "run <*> failed"),
        ("[instance: b9000564-fe1a-409b-b8cc-1e88b294cd1d] VM Paused", "[instance: <*>] VM Paused"),
        # IPs, host:port, IPv6
        ("connect to 10.0.0.12 refused", "connect to <*> refused"),
        ("listening on 10.250.19.102:50010", "listening on <*>:<*>"),
        ("peer fe80::1ff:fe23:4567:890a dropped", "peer <*> dropped"),
        ("upstream db-7.internal:5432 down", "upstream <*>:<*> down"),
        # paths and URLs
        ("cannot open /var/log/agent/run.log", "cannot open <*>"),
        ("loading ./conf/app.yaml and ~/x.toml", "loading <*> and <*>"),
        ("wrote C:\\Temp\\out.txt", "wrote <*>"),
        ("GET /v2/servers/detail?all=True&since=2017 done", "GET <*> done"),
        ("POST https://openrouter.ai/api/v1/chat/completions?x=1 failed", "POST <*> failed"),
        # durations
        ("tool search timed out after 30s", "tool search timed out after <*>"),
        ("took 250ms then 1.5h", "took <*> then <*>"),
        # timestamps
        ("at 2017-05-16 00:00:00.008 and 2024-01-02T03:04:05Z", "at <*> and <*>"),
        ("since 18:01:47,978 ok", "since <*> ok"),
        ("changed Fri Jul 01 08:16:53 PDT 2005", "changed <*>"),
        # quoted strings: single tokens masked, JSON keys kept
        ("KeyError: 'run_id'", "KeyError: <*>"),
        ('unknown tool "web_fetch" requested', "unknown tool <*> requested"),
        ('{"level": "error"}', '{"level": <*>}'),
        # key=value values
        ("uid=0 euid=0 tty=ssh ruser= rhost=1.2.3.4", "uid=<*> euid=<*> tty=<*> ruser= rhost=<*>"),
        ("status=failed agent=planner", "status=<*> agent=<*>"),
        # sizes with their unit
        ("estimated size 16.0 B, free 317.5 KB", "estimated size <*>, free <*>"),
        # MAC addresses
        ("link 00:1a:2b:3c:4d:5e up", "link <*> up"),
        # ids with digits
        ("block blk_-6952295868487656571 of rdd_2_3 for gpt-4o", "block <*> of <*> for <*>"),
        # lists collapse into one variable
        ("ask 10.0.0.1:50010 to delete blk_1 blk_2 blk_3", "ask <*>:<*> to delete <*>"),
        ("ips 10.0.0.1,10.0.0.2 denied", "ips <*> denied"),
    ],
)
def test_mask_each_kind(line: str, expected: str) -> None:
    assert mask(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "Connection reset by peer",
        "jk2_init() Found child",  # a function name with a digit is code
        'HTTP request failed: "connection refused by peer"',  # a multi-word quote is kept
        "rts tree/torus link training failed",
        "instance sync did not match",
    ],
)
def test_mask_keeps_constants(line: str) -> None:
    assert "<*>" not in mask(line)


def test_mask_keeps_keys_and_dot_leaders() -> None:
    assert mask("r24=0x0 PSR0=7") == "r24=<*> PSR0=<*>"
    assert mask("program interrupt: illegal instruction......0") == (
        "program interrupt: illegal instruction......<*>"
    )
    # a multi-word quoted string is tokenised, its variables masked inside
    assert mask('10.1.1.1 "GET /v2/x HTTP/1.1" status: 200') == '<*> "GET <*>" status: <*>'


def test_tokenize_splits_structural_punctuation() -> None:
    assert tokenize(mask("pam_unix(sshd:auth): failure; uid=0 provider openai: HTTP 429,")) == [
        "pam_unix", "(", "sshd:auth", ")", ":", "failure", ";", "uid", "=", MASK,
        "provider", "openai", ":", "HTTP", MASK, ",",
    ]  # fmt: skip


# -- grouping, generalising, merging ----------------------------------------------------------


def templates(messages: Sequence[str], config: MinerConfig | None = None) -> dict[str, int]:
    _, clusters = mine(messages, config)
    return {c.template: c.size for c in clusters.values()}


def test_generalises_differing_data_tokens() -> None:
    lines = [
        "Received block blk_1 of size 67108864 from /10.250.10.6",
        "Received block blk_2 of size 3 from /10.250.14.224",
        "open db.primary.local failed",
        "open cache.eu-west.local failed",
    ]
    assert templates(lines) == {
        "Received block <*> of size <*> from <*>": 2,
        "open <*> failed": 2,
    }


def test_word_variants_stay_apart_until_enough_then_merge() -> None:
    states = ["Paused", "Resumed", "Started", "Stopped"]
    lines = [
        f"[instance: {i:08x}-0000-0000-0000-000000000000] VM {s}" for i, s in enumerate(states * 3)
    ]
    # four alternatives: four messages (lifecycle events, HTTP verbs...)
    assert templates(lines) == {f"[instance: <*>] VM {s}": 3 for s in states}
    # a fifth distinct word at that position: it is a variable (user names, tool names...)
    ids, clusters = mine([*lines, "[instance: 0-0-0-0-0] VM Crashed"])
    assert len(set(ids)) == 1
    assert [c.template for c in clusters.values()] == ["[instance: <*>] VM <*>"]
    assert next(iter(clusters.values())).size == 13


def test_two_word_differences_are_different_messages() -> None:
    lines = [
        f"attempt_{i} TaskAttempt Transitioned from {a} to {b}"
        for i, (a, b) in enumerate(
            [("NEW", "UNASSIGNED"), ("UNASSIGNED", "ASSIGNED"), ("ASSIGNED", "RUNNING")] * 2
        )
    ]
    assert len(templates(lines)) == 3


def test_compatible_clusters_merge_and_ids_resolve() -> None:
    miner = TemplateMiner()
    a = miner.add("sync a.x b.x c.x d.x done").id
    # too few equal tokens (2 of 6) to join: a second cluster
    b = miner.add("sync 1 b.y 2 d.y done").id
    assert a != b and len(miner.clusters) == 2
    # not covered by the second; joins the first (4 of 6 equal), which generalises to
    # "sync a.x <*> c.x <*> done": now compatible with the second, so the two merge
    c = miner.add("sync a.x b.z c.x d.y done")
    assert [x.template for x in miner.clusters] == ["sync <*> <*> <*> <*> done"]
    assert c.id == a and c.size == 3
    assert miner.resolve(b) == a and miner.get(b) is c


def test_mine_reports_final_ids_for_early_lines() -> None:
    users = ["alice", "bob", "carol", "dave", "erin", "frank"]
    lines = [f"Invalid user {u} from 10.0.0.{i}" for i, u in enumerate(users)]
    ids, clusters = mine(lines)
    assert len(set(ids)) == 1 and set(ids) == set(clusters)
    assert clusters[ids[0]].template == "Invalid user <*> from <*>"
    assert clusters[ids[0]].size == len(lines)


def test_match_does_not_learn() -> None:
    miner = TemplateMiner()
    miner.add("Failed password for root from 10.0.0.1 port 22 ssh2")
    before = miner.to_state()
    hit = miner.match("Failed password for root from 10.9.9.9 port 2222 ssh2")
    assert hit is not None and hit.size == 1
    assert miner.match("Accepted password for root from 10.0.0.1 port 22 ssh2") is None
    assert miner.match("something else entirely") is None
    assert miner.to_state() == before


def test_add_and_add_many_agree() -> None:
    contents, _ = loghub("OpenSSH")
    one = TemplateMiner()
    many = TemplateMiner()
    assert [one.add(m).id for m in contents[:500]] == many.add_many(contents[:500])


def test_empty_and_blank_messages() -> None:
    miner = TemplateMiner()
    assert miner.add("").template == ""
    assert miner.add("   ").id == miner.add("").id


# -- agent logs -------------------------------------------------------------------------------


def agent_lines(seed: int) -> list[tuple[str, str]]:
    """(kind, message) pairs: the error messages an agent fleet logs."""
    r = random.Random(seed)
    tools = ["search", "browse", "fetch_url", "python", "shell", "read_file"]
    providers = ["openai", "anthropic", "google", "mistral", "groq", "deepseek"]
    models = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b"]
    out = []
    for _ in range(300):
        k = r.randrange(6)
        if k == 0:
            out.append(
                ("timeout", f"tool {r.choice(tools)} timed out after {r.choice([30, 60, 120])}s")
            )
        elif k == 1:
            msg = (
                f"rate limited by provider {r.choice(providers)}: HTTP 429,"
                f" retry after {r.randrange(1, 60)}s"
            )
            out.append(("ratelimit", msg))
        elif k == 2:
            msg = (
                f"JSONDecodeError: Expecting value: line {r.randrange(1, 9)} column"
                f" {r.randrange(1, 80)} (char {r.randrange(0, 900)})"
            )
            out.append(("json", msg))
        elif k == 3:
            msg = (
                f"context length exceeded: {r.randrange(128_001, 200_000)} tokens > 128000 limit"
                f" for model {r.choice(models)}"
            )
            out.append(("context", msg))
        elif k == 4:
            msg = (
                f"HTTP {r.choice([500, 502, 503])} from https://api.example.com/v1/chat"
                f" after {r.randrange(9, 999)}ms"
            )
            out.append(("http", msg))
        else:
            msg = (
                f'File "/srv/agent/tools/{r.choice(tools)}.py", line {r.randrange(1, 400)}, in run'
            )
            out.append(("traceback", msg))
    return out


def test_agent_error_messages_one_template_per_kind() -> None:
    pairs = agent_lines(seed=3)
    ids, clusters = mine([m for _, m in pairs])
    kinds_per_cluster: dict[int, set[str]] = defaultdict(set)
    clusters_per_kind: dict[str, set[int]] = defaultdict(set)
    for (kind, _), cid in zip(pairs, ids, strict=True):
        kinds_per_cluster[cid].add(kind)
        clusters_per_kind[kind].add(cid)
    assert all(len(v) == 1 for v in clusters_per_kind.values()), clusters_per_kind
    assert all(len(v) == 1 for v in kinds_per_cluster.values()), kinds_per_cluster
    got = {next(iter(kinds_per_cluster[c.id])): c.template for c in clusters.values()}
    assert got == {
        "timeout": "tool <*> timed out after <*>",
        "ratelimit": "rate limited by provider <*>: HTTP <*>, retry after <*>",
        "json": "JSONDecodeError: Expecting value: line <*> column <*> (char <*>)",
        "context": "context length exceeded: <*> tokens > <*> limit for model <*>",
        "http": "HTTP <*> from <*> after <*>",
        "traceback": "File <*>, line <*>, in run",
    }


# -- state and determinism --------------------------------------------------------------------


def mixed_stream(seed: int) -> list[str]:
    lines: list[str] = []
    for system in ("OpenSSH", "OpenStack", "Hadoop", "BGL"):
        lines.extend(loghub(system)[0])
    lines.extend(m for _, m in agent_lines(seed))
    random.Random(seed).shuffle(lines)
    return lines


def snapshot(clusters: list[Cluster]) -> list[tuple[int, str, int]]:
    return [(c.id, c.template, c.size) for c in clusters]


def test_state_round_trip_gives_identical_future_assignments() -> None:
    lines = mixed_stream(seed=11)
    half = len(lines) // 2
    original = TemplateMiner()
    original.add_many(lines[:half])  # its memo is warm; the restored one's is empty
    state = json.loads(json.dumps(original.to_state()))
    restored = TemplateMiner.from_state(state)
    assert snapshot(restored.clusters) == snapshot(original.clusters)
    assert restored.to_state() == state

    probes = lines[half : half + 300]
    assert [getattr(original.match(m), "id", None) for m in probes] == [
        getattr(restored.match(m), "id", None) for m in probes
    ]
    assert original.add_many(lines[half:]) == restored.add_many(lines[half:])
    assert snapshot(restored.clusters) == snapshot(original.clusters)
    assert [original.resolve(i) for i in range(1, 200)] == [
        restored.resolve(i) for i in range(1, 200)
    ]


def test_from_state_rejects_unknown_version() -> None:
    with pytest.raises(ValueError, match="version"):
        TemplateMiner.from_state({"version": 99})


def test_deterministic_within_a_process() -> None:
    lines = mixed_stream(seed=5)
    first = mine(lines)
    second = mine(lines)
    assert first[0] == second[0]
    assert snapshot(list(first[1].values())) == snapshot(list(second[1].values()))


def test_deterministic_across_hash_seeds() -> None:
    """Set and dict hashing changes between processes; the result must not."""
    script = (
        "import csv, hashlib, sys\n"
        "from pathlib import Path\n"
        "from backend.patterns import mine\n"
        "rows = []\n"
        "for p in sorted(Path(sys.argv[1]).glob('*/*_2k.log_structured_corrected.csv')):\n"
        "    with p.open(newline='', encoding='utf-8') as f:\n"
        "        rows += [r['Content'].strip() for r in csv.DictReader(f)]\n"
        "ids, clusters = mine(rows)\n"
        "h = hashlib.sha256(repr((ids, [(c.id, c.template, c.size) for c in clusters.values()]))"
        ".encode())\n"
        "print(h.hexdigest())\n"
    )
    loghub("Apache")  # fail clearly when the data is missing
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", script, str(LOGHUB)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1 and len(next(iter(digests))) == len(hashlib.sha256().hexdigest())


# -- accuracy ---------------------------------------------------------------------------------


def test_loghub_folder_present() -> None:
    if not LOGHUB.is_dir():
        pytest.fail(f"Loghub samples not found at {LOGHUB}: the accuracy tests need them")
    missing = [s for s in GA_FLOORS if not (LOGHUB / s).is_dir()]
    assert not missing, f"Loghub systems missing under {LOGHUB}: {missing}"


@pytest.mark.parametrize("system", sorted(GA_FLOORS))
def test_grouping_accuracy_floor(system: str) -> None:
    contents, truth = loghub(system)
    predicted, _ = mine(contents)
    assert grouping_accuracy(truth, predicted) >= GA_FLOORS[system]


def test_mean_grouping_accuracy_one_config() -> None:
    scores = []
    for system in GA_FLOORS:
        contents, truth = loghub(system)
        scores.append(grouping_accuracy(truth, mine(contents)[0]))
    assert sum(scores) / len(scores) >= 0.985  # the goal was 0.93; drain3 as shipped: 0.855


def test_accuracy_does_not_depend_on_line_order() -> None:
    contents, truth = loghub("OpenSSH")
    order = list(range(len(contents)))
    random.Random(2).shuffle(order)
    predicted, _ = mine([contents[i] for i in order])
    assert grouping_accuracy([truth[i] for i in order], predicted) >= GA_FLOORS["OpenSSH"]
