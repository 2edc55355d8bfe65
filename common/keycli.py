"""``minicdn keygen``."""

from __future__ import annotations

import click

from common.cli import option
from common.signing import generate_keypair


@click.command()
@option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory for the keys.")
def keygen(out_dir: str) -> None:
    """Write OUT/signing.key (PKCS#8 PEM, 0600) and OUT/public.key (64 hex digits)."""
    key = generate_keypair(out_dir)
    click.echo(f"key_id {key.key_id}: wrote {out_dir}/signing.key and {out_dir}/public.key")
