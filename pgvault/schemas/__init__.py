"""The published JSON Schemas (draft 2020-12) scripts can rely on: a set's manifest, its
verify record, and the document `pgvault list format=json` prints.

The files here are generated from the models; `python -m pgvault.schemas` writes them
again, and a test fails when one is out of date.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def generated() -> dict[str, dict[str, Any]]:
    """name -> schema, from the models themselves."""
    from pgvault import listing, manifest

    return {**manifest.json_schemas(), "list": listing.json_schema()}


def text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path = HERE) -> list[Path]:
    out = []
    for name, schema in generated().items():
        path = directory / f"{name}.schema.json"
        path.write_text(text(schema))
        out.append(path)
    return out
