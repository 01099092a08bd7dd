"""Render the model card (README.md of a checkpoint) from the top-level `model_card.md` template."""

from __future__ import annotations

import re

from .modalities import MODALITIES


def modality_table(names) -> str:
    """A Markdown table of the modalities a model knows, with units and lengths from the registry."""
    rows = ["| name | kind | length | unit | description |", "|---|---|---|---|---|"]
    for name in names:
        m = MODALITIES[name]
        rows.append(f"| `{m.name}` | {m.kind} | {m.length} | {m.unit or '-'} | {m.description} |")
    return "\n".join(rows)


def metrics_table(metrics: dict) -> str:
    """Flat `name: value` metrics as a two-column Markdown table (numbers to 4 significant figures)."""
    if not metrics:
        return "No evaluation has been recorded for this checkpoint."
    rows = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        rows.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    return "\n".join(rows)


def render(template: str, **fields: str) -> str:
    """Fill `{{ name }}` placeholders; a placeholder without a value is an error, not a silent blank."""

    def fill(match):
        key = match.group(1)
        if key not in fields:
            raise KeyError(f"model card template needs a value for {{{{ {key} }}}}")
        return str(fields[key])

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", fill, template)


def replace_section(text: str, heading: str, body: str) -> str:
    """Replace the body of the Markdown section `## heading` (up to the next `## `) with `body`; a card
    without that section gets it appended."""
    pattern = re.compile(rf"(^## {re.escape(heading)}\n)(.*?)(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda m: m.group(1) + "\n" + body.strip() + "\n\n", text, count=1)
    return text.rstrip() + f"\n\n## {heading}\n\n{body.strip()}\n"
