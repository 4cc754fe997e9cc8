"""The per-release SHA1 table of REDIS-USAGE.md §5, parsed, with a frozen copy for machines
without /work/shared.

``expected_shas()`` returns ``{release: {script name: sha1}}`` for v0.24.0 .. main. It parses the
shared reference when it is present (and the tests check that the frozen copy,
tests/asynq/reference-sha1.json, still agrees with it); otherwise it reads the frozen copy.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

REFERENCE = Path("/work/shared/asynq/REDIS-USAGE.md")
FROZEN = Path(__file__).resolve().parent / "asynq" / "reference-sha1.json"
RELEASES = ("v0.24.0", "v0.24.1", "v0.25.0", "v0.25.1", "v0.26.0", "main")

_SHA = r"`([0-9a-f]{40})`"


def _canonical(name: str) -> str:
    name = name.strip().strip("`")
    if name.startswith("listServerKeys"):
        return "listServerKeysCmd"            # three Go vars, one source, one SHA1
    name = name.replace("x/rate ", "").replace(" (HEAD)", "")
    return name


def parse(text: str) -> dict[str, dict[str, str]]:
    section = text[text.index("## 5. SHA1"):text.index("## 6.")]
    head_part, older = section.split("How older releases differ", 1)
    older = older[:older.index("asyrq")]
    head: dict[str, str] = {}
    for line in head_part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(_SHA, cells[1]) and re.fullmatch(_SHA, cells[3]):
            head[_canonical(cells[0])] = cells[1].strip("`")
            head[_canonical(cells[2])] = cells[3].strip("`")
    full = set(re.findall(r"[0-9a-f]{40}", section))

    def expand(prefix: str) -> str:
        [sha] = [s for s in full if s.startswith(prefix)]     # abbreviated in the prose
        return sha

    # Each top-level bullet names releases in bold, then `name` = `sha` overrides (full or
    # abbreviated), and says whether updateTaskPayloadCmd is missing.
    overrides: dict[str, dict[str, str]] = {}
    missing_update: set[str] = set()
    for block in re.split(r"\n- \*\*", older)[1:]:
        releases = re.findall(r"v\d+\.\d+\.\d+", block[:block.index("**")])
        pairs = {_canonical(n): expand(s)
                 for n, s in re.findall(r"`(\w+)` = `([0-9a-f]{8,40})", block)}
        inherits = "the v0.24.1 differences" in block
        for r in releases:
            overrides[r] = {**(overrides.get("v0.24.1", {}) if inherits else {}), **pairs}
        if "v0.25.x has no `updateTaskPayloadCmd`" in block:
            missing_update |= {"v0.25.0", "v0.25.1"}
        elif re.search(r"no `updateTaskPayloadCmd`", block, re.I) or \
                (inherits and "v0.24.1" in missing_update):
            missing_update |= set(releases)
    out = {"main": dict(head)}
    for r in RELEASES[:-1]:
        table = {**head, **overrides.get(r, {})}
        if r in missing_update:
            table.pop("updateTaskPayloadCmd", None)
        out[r] = table
    return out


def expected_shas() -> dict[str, dict[str, str]]:
    if REFERENCE.exists():
        return parse(REFERENCE.read_text())
    return json.loads(FROZEN.read_text())
