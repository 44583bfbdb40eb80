"""Wiring of the registration service: settings, the approval policy, the credential key and the commands."""

from __future__ import annotations

import asyncio

from flotilla_contracts.subjects import Service
from flotilla_kube.selectors import SelectorError, parse_selector
from flotilla_registration import __version__, callout, metrics, signingkey
from flotilla_registration.callout import AuthCallout
from flotilla_registration.handlers import Registration
from flotilla_registration.natsjwt import UserLimits
from flotilla_registration.revocation import Revoker
from flotilla_runtime.errors import SettingsError
from flotilla_runtime.service import ServiceApp, ServiceSpec
from flotilla_runtime.settings import ServiceSettings, env_prefix
from flotilla_runtime.trust import RefusalLedger


class Settings(ServiceSettings, kw_only=True, frozen=True):
    """`FLOTILLA_REGISTRATION_*` environment variables (see flotilla_runtime.settings for the shared ones)."""

    # Clusters whose labels match this selector are approved when they join; empty: no such policy.
    auto_approve_selector: str = ""
    # HMAC key for cluster credentials; empty: `<state dir>/signing.key` (0600), minted for a new fleet only.
    credential_key: str = ""
    # Account nkey seed ("SA...") that signs NATS auth-callout answers; empty: the callout is not served
    # (a bus without authentication). The server's `auth_callout.issuer` is its public key.
    callout_issuer_seed: str = ""
    callout_grant_ttl_s: int = 600  # an agent's bus grant lasts this long, then it is asked about again
    # Limits in each member's user JWT (`subs`, `payload`; natsjwt.UserLimits says when the server applies them):
    # a node-agent holds a handful of subscriptions; members' largest messages are bounded by the services' 256 KiB.
    member_max_subs: int = 256
    member_max_payload: int = 512 * 1024
    # The most nodes one cluster's inventory may hold; a join or report past it is refused whole and counted.
    max_nodes_per_cluster: int = 5000
    # URL as `registration-revoker` (a system-account user that may list and kick connections): a
    # deregistered cluster's open connections are then closed at once; empty: at their grant's expiry.
    revoker_nats_url: str = ""


def member_limits(settings: Settings) -> UserLimits:
    """The server-side limits of every member connection, from the settings."""
    prefix = env_prefix(Service.REGISTRATION)
    if settings.member_max_subs < 1 or settings.member_max_payload < 1024:
        raise SettingsError(f"{prefix}MEMBER_MAX_SUBS must be at least 1 and {prefix}MEMBER_MAX_PAYLOAD at least 1024")
    return UserLimits(subs=settings.member_max_subs, payload=settings.member_max_payload)


async def setup(app: ServiceApp[Settings]) -> None:
    """Register the commands; the runtime already serves `info` and service discovery."""
    policy = None
    if app.settings.auto_approve_selector:
        try:
            policy = parse_selector(app.settings.auto_approve_selector)
        except SelectorError as exc:
            raise SettingsError(f"{env_prefix(app.name)}AUTO_APPROVE_SELECTOR: {exc}") from None
    key = await signingkey.load(
        app.store,
        app.settings.credential_key,
        lambda: signingkey.fleet_has_members(app.settings.nats_url, app.log),
        app.log,
    )
    revoker = Revoker(app.settings.revoker_nats_url) if app.settings.revoker_nats_url else None
    if app.settings.max_nodes_per_cluster < 1:
        raise SettingsError(f"{env_prefix(app.name)}MAX_NODES_PER_CLUSTER must be at least 1")
    Registration(
        store=app.store,
        credential_key=key,
        policy=policy,
        revoker=revoker,
        ledger=RefusalLedger(Service.REGISTRATION.value, app.metrics),
        max_nodes_per_cluster=app.settings.max_nodes_per_cluster,
    ).register(app.router)
    metrics.register(app.metrics, app.store)
    if revoker is not None:

        async def close_revoker_on_stop() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await revoker.close()

        app.background(close_revoker_on_stop)
    elif app.settings.callout_issuer_seed:
        app.log.warning(
            "%sREVOKER_NATS_URL is not set: a deregistered cluster keeps its open connections until their "
            "grant expires (%ds)", env_prefix(app.name), app.settings.callout_grant_ttl_s,
        )  # fmt: skip
    if app.settings.callout_issuer_seed:
        limits = member_limits(app.settings)
        try:
            auth = AuthCallout(
                app.store,
                key,
                app.settings.callout_issuer_seed,
                ttl_s=app.settings.callout_grant_ttl_s,
                limits=limits,
            )
        except Exception as exc:
            raise SettingsError(f"{env_prefix(app.name)}CALLOUT_ISSUER_SEED is not an account seed: {exc}") from None

        async def serve_callout() -> None:
            await callout.run(auth, app.broker.connection)

        app.background(serve_callout)


SPEC = ServiceSpec(
    service=Service.REGISTRATION,
    version=__version__,
    description="Join tokens, cluster approval and the fleet inventory of clusters and nodes.",
    settings_type=Settings,
    setup=setup,
    migrations_package="flotilla_registration",
)
