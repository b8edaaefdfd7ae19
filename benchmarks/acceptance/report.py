"""Result files of the acceptance run: one markdown + JSON per part, the summary, the console screen."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

MARK = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def machine_lines(env: dict | None) -> list[str]:
    """Hardware and versions from the env part (or a line saying they are unknown)."""
    if not env or not env.get("versions"):
        return ["- Hardware and versions: unknown (the env part did not report them)"]
    v, m, gpu = env["versions"], env["machine"], env.get("gpu", {})
    gpu_text = (f"{gpu['name']}, {gpu['memory_gib']:.1f} GiB, compute capability {gpu['capability']}, driver "
                f"{gpu.get('driver', '?')}" if gpu.get("name") else "no CUDA device")
    shown = ("torchvision", "numpy", "scipy", "sklearn", "cupy", "nvidia.dali", "cuml")
    others = ", ".join(f"{k} {v[k]}" for k in shown if k in v)
    return [f"- Hardware: {m['cpu']}; GPU: {gpu_text}",
            f"- Versions: Python {v['python']}, torch {v['torch']} (CUDA {v['torch CUDA']}, cuDNN {v['cuDNN']}, "
            f"NCCL {v['NCCL']}); {others}",
            f"- Code: commit {m['commit']}, cacl_dist {m['cacl_dist']}"]


def part_markdown(name: str, title: str, outcome: dict, env: dict | None, harness_command: str) -> str:
    """The markdown file of one part: result, machine, commands, time, details."""
    lines = [f"# GPU acceptance, {name}: {title}", "",
             f"- Result: **{MARK[outcome['status']]}**: {outcome['summary']}",
             f"- Time: {outcome['seconds']:.1f} s of its {outcome['limit']:.0f} s limit; "
             f"log `{outcome.get('log', '-')}`", *machine_lines(env),
             f"- Harness: `{harness_command}`"]
    if outcome.get("commands"):
        lines += ["- Commands of this part:", "", "```bash", *outcome["commands"], "```"]
    lines += ["", *outcome.get("details", [])]
    for file in outcome.get("files", []):
        if file.endswith(".png"):
            lines += ["", f"![{name}]({file})"]
    return "\n".join(lines) + "\n"


def write_part(results: Path, tag: str, name: str, title: str, outcome: dict, env: dict | None,
               harness_command: str) -> list[str]:
    """Write acceptance_<name>_<tag>.{md,json}; returns the file names."""
    stem = results / f"acceptance_{name}_{tag}"
    stem.with_suffix(".md").write_text(part_markdown(name, title, outcome, env, harness_command))
    payload = {"part": name, "title": title, "tag": tag, "harness_command": harness_command,
               "machine": (env or {}).get("machine"), "versions": (env or {}).get("versions"),
               "gpu": (env or {}).get("gpu"), **outcome}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return [stem.with_suffix(".md").name, stem.with_suffix(".json").name]


def screen(rows: list[dict], header: str, total_s: float, budget_s: float, summary_path: Path) -> str:
    """The one-screen pass/fail summary printed at the end."""
    width = max(len(r["name"]) for r in rows)
    lines = [header, f"{'part':{width}s}  result  time s  limit s  note"]
    for r in rows:
        note = r["summary"] if len(r["summary"]) <= 150 else r["summary"][:147] + "..."
        lines.append(f"{r['name']:{width}s}  {MARK[r['status']]:6s}  {r['seconds']:6.0f}  {r['limit']:7.0f}  {note}")
    counts = {k: sum(r["status"] == k for r in rows) for k in MARK}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped in {total_s:.0f} s "
                 f"(budget {budget_s:.0f} s); details: {summary_path}")
    return "\n".join(lines)


def summary_markdown(rows: list[dict], header: str, env: dict | None, harness_command: str, total_s: float,
                     budget_s: float) -> str:
    """gpu_acceptance_<tag>.md: every part's result with links to its files."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    failed = [r["name"] for r in rows if r["status"] == "fail"]
    lines = [f"# GPU acceptance: {header}", "",
             f"**{'FAILED: ' + ', '.join(failed) if failed else 'ALL PARTS PASSED OR SKIPPED'}** "
             f"({total_s:.0f} s of a {budget_s:.0f} s budget, {date})", "", *machine_lines(env),
             f"- Command: `{harness_command}`", "",
             "| part | what | result | time s | limit s | summary | files |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        files = " ".join(f"[{f.rsplit('.', 1)[1]}]({f})" for f in r.get("written", []) + r.get("files", []))
        lines.append(f"| {r['name']} | {r['title']} | **{MARK[r['status']]}** | {r['seconds']:.0f} "
                     f"| {r['limit']:.0f} | {r['summary']} | {files} |")
    return "\n".join(lines) + "\n"
