"""Reachability of the backing services a profile needs (`pushplan check`, and readiness probes later)."""

from __future__ import annotations

from dataclasses import dataclass

from pushplan.settings import Profile, Settings


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    target: str
    ok: bool
    detail: str


def check_services(settings: Settings, timeout_s: float = 3.0) -> list[ServiceStatus]:
    """Probe each service of the profile once; the local profile's data dir must be writable."""
    if settings.profile is Profile.local:
        return [_check_data_dir(settings)]
    assert settings.redis_url and settings.database_url  # the settings validator guarantees both
    return [
        _check_data_dir(settings),
        _check_redis(settings.redis_url, timeout_s),
        _check_postgres(settings.database_url, timeout_s),
    ]


def reachable(url: str, timeout_s: float = 2.0) -> bool:
    """Whether anything accepts a TCP connection at the URL's host and port."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=timeout_s):
            return True
    except OSError:
        return False


def _check_data_dir(settings: Settings) -> ServiceStatus:
    target = str(settings.data_dir.resolve())
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return ServiceStatus("data dir", target, False, str(exc))
    return ServiceStatus("data dir", target, True, "writable")


def _check_redis(url: str, timeout_s: float) -> ServiceStatus:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        version = client.info("server").get("redis_version", "?")
    except redis.RedisError as exc:
        return ServiceStatus("redis", _redact(url), False, str(exc))
    finally:
        client.close()
    return ServiceStatus("redis", _redact(url), True, f"Redis {version}")


def _check_postgres(url: str, timeout_s: float) -> ServiceStatus:
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": max(1, int(timeout_s))})
    try:
        with engine.connect() as connection:
            version = connection.execute(sa.text("show server_version")).scalar_one()
    except sa.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc  # the driver's own message is the readable one
        return ServiceStatus("postgresql", _redact(url), False, str(cause).strip().splitlines()[0])
    finally:
        engine.dispose()
    return ServiceStatus("postgresql", _redact(url), True, f"PostgreSQL {version}")


def _redact(url: str) -> str:
    """The URL without its password, fit for logs and terminals."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL still deserves a printable target
        return url.split("@")[-1]
