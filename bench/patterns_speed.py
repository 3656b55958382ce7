"""Template-miner speed: lines/s on a 200,000-line mix, next to drain3 in the same run.

    python bench/patterns_speed.py [DIR] [--lines 200000] [--seed 7]

The mix: the Content column of every Loghub-2k system under DIR (default ../shared/data/loghub
next to the project), repeated and shuffled with a fixed seed, plus one synthetic agent error
message in five (fresh numbers, ids and names each time). Both miners get the same lines in the
same order, masking on: drain3 (a bench-only baseline, `pip install drain3==0.9.11`) is given the
same variable kinds as masking instructions, one regex per kind, the way drain3 is configured.
Goal (issue: failure patterns): miner / drain3 >= 4.

Our miner is timed twice: as shipped (identical masked lines are answered from its memo) and with
the memo off (every line is tokenised and matched), so the memo's share of the ratio is visible.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

from backend.patterns import MinerConfig, TemplateMiner  # noqa: E402
from backend.patterns.masking import _ALTERNATIVES, _START  # noqa: E402

DEFAULT_DIR = ROOT / ".." / "shared/data/loghub"

TOOLS = ["search", "browse", "fetch_url", "python", "shell", "read_file", "write_file", "sql"]
PROVIDERS = ["openai", "anthropic", "google", "mistral", "groq", "deepseek", "together"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b", "gemini-1.5-pro"]
EXCEPTIONS = ["KeyError", "ValueError", "TimeoutError", "ConnectionResetError"]


def agent_message(r: random.Random) -> str:
    """One synthetic agent error line (eight kinds, variable parts drawn from `r`)."""
    k = r.randrange(8)
    if k == 0:
        return f"tool {r.choice(TOOLS)} timed out after {r.choice([10, 30, 60, 120])}s"
    if k == 1:
        return (
            f"rate limited by provider {r.choice(PROVIDERS)}: HTTP 429,"
            f" retry after {r.randrange(1, 60)}s"
        )
    if k == 2:
        return (
            f"JSONDecodeError: Expecting value: line {r.randrange(1, 40)}"
            f" column {r.randrange(1, 120)} (char {r.randrange(0, 5000)})"
        )
    if k == 3:
        return (
            f"context length exceeded: {r.randrange(128_001, 250_000)} tokens > 128000 limit"
            f" for model {r.choice(MODELS)}"
        )
    if k == 4:
        return (
            f"HTTP {r.choice([500, 502, 503, 504])} from https://openrouter.ai/api/v1/chat/completions"
            f" after {r.randrange(50, 30_000)}ms (attempt {r.randrange(1, 4)}/3)"
        )
    if k == 5:
        return (
            f'File "/srv/agent/tools/{r.choice(TOOLS)}.py", line {r.randrange(1, 900)},'
            f" in {r.choice(['run', 'call', '_invoke'])}"
        )
    if k == 6:
        return (
            f"{r.choice(EXCEPTIONS)}: run {r.getrandbits(64):016x} step {r.randrange(1, 60)}"
            f" failed after {r.randrange(1, 9000) / 10:.1f}s"
        )
    return (
        f"run_id={r.getrandbits(128):032x} agent=agent-{r.randrange(1, 30)} status=failed"
        f" error='tool_error' duration_ms={r.randrange(10, 90_000)}"
    )


def build_mix(root: Path, lines: int, seed: int) -> list[str]:
    contents: list[str] = []
    for path in sorted(root.glob("*/*_2k.log_structured_corrected.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            contents.extend(row["Content"].strip() for row in csv.DictReader(f))
    if not contents:
        raise SystemExit(f"no Loghub CSVs under {root}")
    r = random.Random(seed)
    n_agent = lines // 5
    mix = [r.choice(contents) for _ in range(lines - n_agent)]
    mix.extend(agent_message(r) for _ in range(n_agent))
    r.shuffle(mix)
    return mix


def rate(fn: Callable[[Sequence[str]], object], lines: Sequence[str]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(lines)
    return len(lines) / (time.perf_counter() - t0), out


def run_ours(lines: Sequence[str], memo: bool = True) -> int:
    miner = TemplateMiner(MinerConfig() if memo else MinerConfig(memo_size=0))
    miner.add_many(lines)
    return len(miner.clusters)


def run_drain3(lines: Sequence[str]) -> int:
    # bench-only baseline, untyped: imported by name so type checking does not need it
    drain3 = importlib.import_module("drain3")
    masking = importlib.import_module("drain3.masking")
    config = importlib.import_module("drain3.template_miner_config")

    cfg = config.TemplateMinerConfig()
    # The same variable kinds as ours, one instruction (one re.sub) per kind, masked as <*>.
    cfg.masking_instructions = [
        masking.MaskingInstruction(_START + alt, "*") for alt in _ALTERNATIVES
    ]
    cfg.mask_prefix, cfg.mask_suffix = "<", ">"
    cfg.drain_sim_th = 0.4
    cfg.drain_depth = 4
    cfg.profiling_enabled = False
    miner = drain3.TemplateMiner(config=cfg)
    add = miner.add_log_message
    for line in lines:
        add(line)
    return len(miner.drain.clusters)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    mix = build_mix(args.dir.resolve(), args.lines, args.seed)
    print(f"mix: {len(mix)} lines, {len(set(mix))} distinct")

    ours, n_ours = rate(run_ours, mix)
    print(f"agentlog miner        {ours:12,.0f} lines/s  ({n_ours} clusters)")
    no_memo, _ = rate(lambda ls: run_ours(ls, memo=False), mix)
    print(f"agentlog miner, no memo {no_memo:10,.0f} lines/s")
    if importlib.util.find_spec("drain3") is None:
        print("drain3 baseline missing (pip install drain3==0.9.11): no ratio")
        return 0
    base, n_base = rate(run_drain3, mix)
    print(f"drain3 0.9.11         {base:12,.0f} lines/s  ({n_base} clusters)")
    print(f"ratio miner / drain3  {ours / base:12.1f}x  (no memo: {no_memo / base:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
