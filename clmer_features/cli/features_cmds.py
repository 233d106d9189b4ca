"""`clmer-features features`: every feature the registry knows, as the extractors declare it."""
from __future__ import annotations

import json

import click


def _format(d: dict) -> str:
    family = d["family"] + (f" (preset of {d['preset_of']})" if d["preset_of"] else "")
    lines = [f"{d['feature']}  [{family}; input {d['input']}]"]
    if d["help"]:
        lines.append(f"  {d['help']}")
    lines.append(f"  model:    {('--models-dir/' + d['default_model']) if d['default_model'] else 'none needed'}")
    needs = [", ".join(d["requires"])] if d["requires"] else []
    needs += [f"{', '.join(w['requires'])} with --param {d['feature']}.{w['param']}={w['value']}"
              for w in d["requires_when"]]
    if needs:
        lines.append(f"  requires: {'; '.join(needs)} (runs first when asked for too; its output is read "
                     "from the store)")
    if d["output"]:
        lines.append(f"  output:   {d['output']}")
    if not d["params"]:
        lines.append("  params:   none")
    for p in d["params"]:
        kind = "spec" if p["spec"] else "run-only"
        lines.append(f"  --param {d['feature']}.{p['name']}={json.dumps(p['default'])}  ({kind}; {p['allowed']})"
                     f"  {p['help']}")
        if "former_default" in p:
            lines.append(f"      default was {json.dumps(p['former_default'])} before: a cache holding that spec "
                         f"keeps it unless {d['feature']}.{p['name']} is given")
    return "\n".join(lines)


@click.command("features")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON list instead of text.")
def features_cmd(names: tuple[str, ...], as_json: bool) -> None:
    """List every feature (or NAMES): family, the model folder it looks for under --models-dir,
    what it requires, its output, and its parameters with defaults ("spec" ones change the
    numbers and so the cache; "run-only" ones do not)."""
    from clmer_features.errors import ClmerError
    from clmer_features.extractors import available, describe, import_problems

    known = available()
    bad = [n for n in names if n not in known]
    if bad:
        raise ClmerError(f"unknown feature(s) {', '.join(bad)}; available: {', '.join(known)}")
    rows = [describe(n) for n in (names or known)]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo("\n\n".join(_format(d) for d in rows))
    for where, why in import_problems.items():
        click.echo(f"warning: {where} could not be imported ({why}); its features are missing", err=True)


def register(group: click.Group) -> None:
    group.add_command(features_cmd)
