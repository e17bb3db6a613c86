"""`sparsealign convert llama2c`: llama2.c checkpoints -> Hugging Face LlamaForCausalLM + fast tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("llama2c")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tokenizer", "tokenizer", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="llama2.c tokenizer export (e.g. tok512.bin) that the checkpoint was trained with.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (written atomically; replaced if it exists). Load it with "
                   "AutoModelForCausalLM / AutoTokenizer.from_pretrained(OUT).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object describing the converted model.")
def llama2c(checkpoint: Path, tokenizer: Path, out: Path, as_json: bool) -> None:
    """Convert a llama2.c CHECKPOINT (.bin: legacy v0, v1 fp32 or v2 int8 export) into an HF Llama directory.

    \b
    Example (the TinyStories 260K model in the shared data):
      sparsealign convert llama2c ../shared/data/models/stories260K/stories260K.bin \\
          --tokenizer ../shared/data/models/stories260K/tok512.bin --out models/stories260K-hf
    """
    from sparsealign.models.llama2c import convert

    summary = convert(checkpoint, tokenizer, out)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(f"wrote {out}: Llama {summary['n_layers']} layers, dim {summary['dim']}, "
                   f"ffn {summary['hidden_dim']}, vocab {summary['vocab_size']}, {summary['parameters']:,} parameters")


def register(cli: click.Group) -> None:
    """Add `llama2c` to the shared `convert` group."""
    cli.commands["convert"].add_command(llama2c)
