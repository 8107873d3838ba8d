"""Write the verdict lines of docs/reproduction.md from `mixsweep compare`'s compare.csv files.

    python docs/reproduction/verdicts.py          # after regenerate.sh's compare commands

Each block between ``<!-- compare:NAME -->`` and ``<!-- /compare:NAME -->`` in
docs/reproduction.md is replaced by the verdict line and the table of intervals made from
docs/reproduction/NAME/compare.csv: the numbers and their direction come from the files the
command writes, so a rerun on other hardware updates them. The prose around them is ours.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "reproduction.md"
KNOWN = {"metric", "moment", "layer", "pairing", "failed A", "failed B", "n", "mean A", "mean B",
         "diff", "se", "df", "censored A", "censored B", "family size", "CI low", "CI high",
         "level", "verdict"}


def _num(v: float) -> str:
    return "—" if pd.isna(v) else f"{v:+.3f}" if abs(v) < 100 else f"{v:+.0f}"


def _cell(row: pd.Series, cells: list[str]) -> str:
    return ", ".join(f"{c} {row[c]}" for c in cells)


def block(name: str, title: str, base: Path = HERE) -> str:
    """The verdict line and the interval table of ``base/name/compare.csv``."""
    t = pd.read_csv(base / name / "compare.csv")
    cells = [c for c in t.columns if c not in KNOWN]
    t = t[t["se"].notna()]  # rows with an interval (n >= 2)
    a = title.split(" − ")[0]
    lines = []
    for metric in t["metric"].unique():
        m = t[t["metric"] == metric]
        counts = m["verdict"].value_counts()
        decided = ", ".join(f"{v}: {k}" for v, k in counts.items())
        fam = sorted(set(zip(m["moment"], m["family size"], strict=True)))
        sizes = "; ".join(f"{mo} {int(f)}" for mo, f in fam)
        lines.append(f"- **{metric}** ({len(m)} intervals; Bonferroni families: {sizes}): {decided}.")
    shown = t[~t["verdict"].str.startswith("no ")]
    out = [f"**Verdicts from `mixsweep compare` ({title}, 95 % simultaneous intervals):**", "",
           *lines, ""]
    if shown.empty:
        out.append(f"No interval excludes zero: no difference between {a} and the other arm is "
                   "shown at this number of seeds.")
    else:
        out += ["The intervals that exclude zero:", "",
                "| cell | metric | moment | layer | n | diff | 95 % CI (adjusted) | verdict |",
                "|---|---|---|---|---|---|---|---|"]
        for _, r in shown.iterrows():
            out.append(f"| {_cell(r, cells)} | {r['metric']} | {r['moment']} | {r['layer']} | "
                       f"{int(r['n'])} | {_num(r['diff'])} | [{_num(r['CI low'])}, "
                       f"{_num(r['CI high'])}] | {r['verdict']} |")
    out += ["", f"All intervals: [{name}/compare.md]({'reproduction/' + name}/compare.md) "
            f"(forest plot: `{'reproduction/' + name}/forest.png`)."]
    return "\n".join(out)


def adaptive_block(name: str, title: str, base: Path = HERE) -> str:
    """The rounds and final decisions of an adaptive sweep, from its rounds.json (copied from
    runs/<sweep>/ into ``base/name``)."""
    r = json.loads((base / name / "rounds.json").read_text(encoding="utf-8"))
    plan, rounds = r["plan"], r["rounds"]
    cells = rounds[-1]["cells"]
    per_round = ", ".join(f"round {x['round']}: {sum(1 for c in x['cells'].values() if c['status'] == 'open')}"
                          f" of {len(x['cells'])} cells open after {x['seeds']} seeds" for x in rounds)
    out = [f"**Adaptive seeds ({title}; `{r['contrast']}`, {r['metric']} at {r['at']}; planned seeds "
           f"per cell {', '.join(map(str, plan['rounds']))}; alpha {plan['alpha']} spent over the "
           f"rounds):** {len(rounds)} rounds, {r['trials']} trials ({per_round}).", "",
           "| cell | seeds | mean A − B | interval at the last look | decision |",
           "|---|---|---|---|---|"]
    for label, c in cells.items():
        out.append(f"| {label} | {c['n']} | {_num(c['mean'])} | [{_num(c['low'])}, {_num(c['high'])}] "
                   f"| {c['status']} |")
    return "\n".join(out)


BLOCK = re.compile(r"(<!-- (compare|adaptive):(\S+) (.*?) -->\n)(.*?)(<!-- /\2:\3 -->)", re.S)


def fill(text: str, base: Path = HERE) -> tuple[str, int]:
    """``text`` with every compare block rewritten from its compare.csv; how many there were."""
    found = 0

    def one(m: re.Match[str]) -> str:
        nonlocal found
        found += 1
        make = block if m.group(2) == "compare" else adaptive_block
        return f"{m.group(1)}{make(m.group(3), m.group(4), base)}\n{m.group(6)}"

    return BLOCK.sub(one, text), found


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    new, found = fill(text)
    if not found:
        print(f"no <!-- compare:NAME TITLE --> block in {DOC}", file=sys.stderr)
        return 2
    tmp = DOC.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(DOC)
    print(f"{DOC.name}: {found} verdict blocks written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
