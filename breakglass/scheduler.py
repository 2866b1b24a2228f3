"""The scheduler's lock: several `celery beat` may run, one sends at a time.

Each beat holds, or waits for, a PostgreSQL advisory lock on a connection of its
own. The lock lives as long as that session: a beat that dies, or loses the
database, lets a waiting one take over within LOCK_RETRY_SECONDS. On SQLite,
which serves one machine, every beat sends.
"""

import logging

import psycopg
from celery.beat import PersistentScheduler
from django.conf import settings
from psycopg.conninfo import make_conninfo

logger = logging.getLogger(__name__)

# "bgbeat": one key per database, since advisory locks belong to a database.
LOCK_KEY = 0x6267_6265_6174
LOCK_RETRY_SECONDS = 5.0


class SchedulerLock:
    """A session-level PostgreSQL advisory lock that says who schedules."""

    def __init__(self, database):
        self.database = database
        self.connection = None
        self.held = False

    def hold(self):
        """Return True while this process holds the lock, taking it if free."""
        try:
            if self.connection is None or self.connection.closed:
                self.connection = psycopg.connect(self._conninfo(), autocommit=True)
                self.held = False
            if self.held:
                # The lock goes with the session: a live session still holds it.
                self.connection.execute("SELECT 1")
            else:
                row = self.connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]
                ).fetchone()
                self.held = bool(row[0])
                if self.held:
                    logger.info("scheduler: took the scheduler lock, sending tasks")
        except psycopg.Error as exc:
            if self.held:
                logger.warning("scheduler: lost the database, stop sending: %s", exc)
            self.release()
        return self.held

    def release(self):
        if self.connection is not None:
            if self.held and not self.connection.closed:
                # Unlock before closing: the server ends a closed session a moment
                # later, and a waiting beat should not miss the lock meanwhile.
                try:
                    self.connection.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
                except psycopg.Error:
                    pass
            self.connection.close()
            self.connection = None
        self.held = False

    def _conninfo(self):
        db = self.database
        return make_conninfo(
            dbname=db["NAME"],
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=db.get("PORT") or None,
            application_name="breakglass-beat-lock",
            connect_timeout=5,
            # A peer that vanished is noticed in about 20 s, not hours.
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=2,
        )


class LockedScheduler(PersistentScheduler):
    """Celery's scheduler, sending only while it holds the scheduler lock."""

    def __init__(self, *args, **kwargs):
        database = settings.DATABASES["default"]
        self.lock = (
            SchedulerLock(database)
            if database["ENGINE"] == "django.db.backends.postgresql"
            else None
        )
        self._waiting = False
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs):
        if self.lock is not None and not self.lock.hold():
            if not self._waiting:
                logger.info("scheduler: another scheduler holds the lock; waiting")
                self._waiting = True
            return LOCK_RETRY_SECONDS
        self._waiting = False
        return min(super().tick(*args, **kwargs), LOCK_RETRY_SECONDS)

    def close(self):
        try:
            super().close()
        finally:
            if self.lock is not None:
                self.lock.release()
