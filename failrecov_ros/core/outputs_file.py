"""Files of recorded model outputs: JSON Lines, one ``{"text": ..., ...}`` object per line.

Used to replay what a model said (or a labelled set) through the runtime without the model.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_outputs(path: str | Path) -> list[dict]:
    """Read the records; raises ValueError naming the file and line of a malformed record."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{number}: expected an object with a string 'text'")
            records.append(record)
    return records
