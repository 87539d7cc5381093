"""API keys and rate limits reloaded while serving: on SIGHUP, and when the ``--api-keys-file`` changes. SIGHUP
also runs the other reloads registered in ``on_sighup`` (the calibration's, :mod:`gateway.serving.calibration_reload`).

A reload reads the settings again (the YAML file, with the same environment and flags) and the keys file,
and puts the new keys, request rate limit and token budget in force in this process's
:class:`~gateway.security.admission.Admission`; connections and requests under way are not touched. With
``--workers N`` the supervisor passes SIGHUP on to every worker, and each worker watches the keys file:
all of them reload. Whatever cannot be loaded (a malformed keys file, invalid settings) leaves the keys
and limits in force as they were, and the log says why. Other settings that changed are logged as
needing a restart.
"""

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

from gateway.config import Settings
from gateway.security.admission import Admission
from gateway.security.auth_throttle import AuthThrottle
from gateway.security.keys import ApiKeys
from gateway.security.ratelimit import RateLimiter, SharedBuckets, token_budget
from monitors.file_stamp import file_stamp

__all__ = ["KeyReloader", "admission_for"]

log = logging.getLogger(__name__)

RELOADED = frozenset({"api_keys", "api_keys_file", "rate_limit_rps", "rate_limit_burst", "rate_limit_tpm"})
KEYS_FILE_POLL = 1.0  # seconds between looks at the keys file's modification time


def admission_for(settings: Settings, shared: SharedBuckets | None = None) -> Admission:
    """The admission of ``settings``: their keys (the file read now), rate limit and token budget, taking
    tokens from ``shared`` buckets when given (workers), and the failed-key throttle."""
    throttle = AuthThrottle(settings.auth_failure_limit, settings.auth_failure_window)
    return Admission(*_limits(settings, shared), throttle)


def _limits(settings: Settings, shared: SharedBuckets | None) -> tuple[ApiKeys, RateLimiter, RateLimiter]:
    """The keys, request limiter and token budget of ``settings``; ValueError or OSError if unreadable."""
    keys = ApiKeys.load(settings.api_keys.get_secret_value(), settings.api_keys_file)
    limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst, shared=shared)
    return keys, limiter, token_budget(settings.rate_limit_tpm, shared=shared)


class KeyReloader:
    """Reloads ``admission`` from the settings ``load`` returns, on SIGHUP and when the keys file changes."""

    def __init__(
        self,
        admission: Admission,
        settings: Settings,
        load: Callable[[], Settings],
        shared: SharedBuckets | None = None,
    ) -> None:
        self.admission = admission
        self.settings = settings
        self.load = load
        self.shared = shared
        self._stamp = file_stamp(settings.api_keys_file) if settings.api_keys_file else None
        # Other reloads SIGHUP triggers (the calibration): each called with why, after the keys.
        self.on_sighup: list[Callable[[str], object]] = []

    def reload(self, why: str) -> bool:
        """Load the settings and keys again and put them in force; False (logged) when they cannot be."""
        try:
            settings = self.load()
            limits = _limits(settings, self.shared)
        except (ValueError, OSError) as problem:
            log.error(
                "%s: keeping the API keys and rate limits in force, the new ones cannot be loaded: %s", why, problem
            )
            return False
        self.admission.configure(*limits)
        changed = sorted(
            name for name in type(settings).model_fields if getattr(settings, name) != getattr(self.settings, name)
        )
        needing_restart = [name for name in changed if name not in RELOADED]
        if needing_restart:
            log.warning("%s: %s changed but take effect only at a restart", why, ", ".join(needing_restart))
        self.settings = settings
        log.info("%s: reloaded %d API key(s) and the rate limits", why, len(limits[0].names))
        return True

    def keys_file_changed(self) -> bool:
        """Whether the keys file was written or replaced since the last look (or since it was set)."""
        path = self.settings.api_keys_file
        stamp = file_stamp(path) if path else None
        changed, self._stamp = stamp != self._stamp, stamp
        return changed and bool(path)

    def _sighup(self) -> None:
        self.reload("SIGHUP")
        for reload in self.on_sighup:
            reload("SIGHUP")

    async def watch(self) -> None:
        """Until cancelled: reload on SIGHUP (when served from the main thread, where signals arrive) and
        whenever the keys file changes."""
        loop = asyncio.get_running_loop()
        on_signal = threading.current_thread() is threading.main_thread()
        if on_signal:
            loop.add_signal_handler(signal.SIGHUP, self._sighup)
        try:
            while True:
                await asyncio.sleep(KEYS_FILE_POLL)
                if self.keys_file_changed():
                    self.reload(f"{self.settings.api_keys_file} changed")
        finally:
            if on_signal:
                loop.remove_signal_handler(signal.SIGHUP)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not fatal for the rest of the shutdown
