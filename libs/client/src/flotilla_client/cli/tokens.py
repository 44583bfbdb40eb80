"""`flotilla token`: join tokens (the registration service), created, listed and revoked."""

from __future__ import annotations

import click

from flotilla_client.cli.common import CliContext, Failure, call, echo, server_option
from flotilla_client.cli.fleet import labels_text
from flotilla_client.cli.output import Column, Listing, output_option, render_json, render_yaml, show_list
from flotilla_client.durations import parse_duration
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import registration as reg
from flotilla_kube.labels import parse_labels

pass_cli = click.make_pass_decorator(CliContext)
REG = Service.REGISTRATION

# --- tokens --------------------------------------------------------------------------------------------------

TOKEN_COLUMNS = (
    Column("ID", "token_id"),
    Column("STATE", lambda t: t.state.value),
    Column("USES", lambda t: f"{t.uses}/{t.max_uses}" if t.max_uses else str(t.uses)),
    Column("EXPIRES", lambda t: t.expires_at or "never"),
    Column("AUTO-APPROVE", "auto_approve"),
    Column("LABELS", lambda t: labels_text(t.labels), max_width=40),
    Column("DESCRIPTION", "description", max_width=40),
    Column("CREATED", "created_at", wide=True),
    Column("REVOKED", "revoked_at", wide=True),
)
TOKEN_LISTING = Listing("token", "tokens", TOKEN_COLUMNS, lambda t: t.token_id)


@click.group()
def token() -> None:
    """Join tokens: what a cluster agent presents the first time it joins."""


@token.command("create")
@click.option("--ttl", default="24h", show_default=True, help="Lifetime (30m, 24h, 7d) or 'never'.")
@click.option("--max-uses", type=click.IntRange(1), help="How many clusters may join with it [default: no limit].")
@click.option("--auto-approve", is_flag=True, help="Clusters joining with it are approved at once.")
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Label given to clusters joining with it.")
@click.option("--description", default="", help="What the token is for.")
@output_option("table", "json", "yaml")
@server_option
@pass_cli
def token_create(
    obj: CliContext,
    ttl: str,
    max_uses: int | None,
    auto_approve: bool,
    labels: tuple[str, ...],
    description: str,
    output: str,
) -> None:
    """Create a join token; the secret is printed once and stored only as a hash.

    The table output is the secret alone on stdout (for scripts: TOKEN=$(flotilla token create)); json and yaml
    give the secret with the token's record (id, expiry, uses, labels).

    \b
    Examples:
      flotilla token create --ttl 2h --max-uses 10 --label env=prod
      flotilla token create --auto-approve --description "lab clusters"
      flotilla token create --ttl 1h -o yaml
    """
    try:
        ttl_s = None if ttl == "never" else parse_duration(ttl)
        request = reg.CreateTokenRequest(
            ttl_s=ttl_s or None,
            max_uses=max_uses,
            auto_approve=auto_approve,
            labels=parse_labels(labels),
            description=description,
        )
    except ValueError as exc:
        raise Failure(str(exc)) from None
    reply = call(obj, REG, "tokens.create", request, reg.CreateTokenReply)
    if output in ("json", "yaml"):
        echo(render_json(reply) if output == "json" else render_yaml(reply))
        return
    echo(reply.token)
    echo(f"token {reply.info.token_id} created; it is not shown again, keep it now", err=True)


@token.command("list")
@click.option("--all", "include_inactive", is_flag=True, help="Include expired, revoked and used-up tokens.")
@output_option()
@server_option
@pass_cli
def token_list(obj: CliContext, include_inactive: bool, output: str) -> None:
    """List join tokens (never their secrets).

    \b
    Examples:
      flotilla token list
      flotilla token list --all -o wide
    """
    reply = call(obj, REG, "tokens.list", reg.ListTokensRequest(include_inactive=include_inactive), reg.ListTokensReply)
    show_list(reply.tokens, output, TOKEN_LISTING)


@token.command("revoke")
@click.argument("token_id")
@server_option
@pass_cli
def token_revoke(obj: CliContext, token_id: str) -> None:
    """Revoke a join token; clusters that joined with it stay members.

    \b
    Example:
      flotilla token revoke t-7c1d0e
    """
    reply = call(obj, REG, "tokens.revoke", reg.RevokeTokenRequest(token_id=token_id), reg.RevokeTokenReply)
    echo(f"token {reply.info.token_id} revoked")
