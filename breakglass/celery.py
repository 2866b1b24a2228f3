"""The Celery application: `celery -A breakglass worker` and `... beat`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "breakglass.settings")

# How often the scheduler looks for overdue reviews to remind.
REVIEW_CHECK_SECONDS = 300

app = Celery("breakglass")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_sweeps(sender, **kwargs):
    from django.conf import settings

    every = settings.BREAKGLASS_SWEEP_SECONDS
    # A heartbeat no worker took within its interval is dropped: after an outage
    # a backlog of them would only repeat what the next one says.
    heartbeat = settings.BREAKGLASS_HEARTBEAT_SECONDS
    sender.add_periodic_task(
        heartbeat,
        sender.signature("breakglass.tasks.heartbeat").set(expires=heartbeat),
    )
    # The sweep is the safety net under every scheduled revocation and delivery:
    # a task lost with its worker or broker is found again within one interval.
    sender.add_periodic_task(every, sender.signature("breakglass.tasks.sweep"))
    sender.add_periodic_task(
        settings.BREAKGLASS_DETECT_SECONDS,
        sender.signature("breakglass.tasks.detect_uses"),
    )
    # Orphans are rare (a crash mid-issuance): listing every target once a
    # minute is enough.
    sender.add_periodic_task(
        settings.BREAKGLASS_RECONCILE_SECONDS,
        sender.signature("breakglass.tasks.reconcile"),
    )
    sender.add_periodic_task(
        settings.BREAKGLASS_VERIFY_SECONDS,
        sender.signature("breakglass.tasks.verify_trail"),
    )
    if settings.BREAKGLASS_CHECKPOINT_KEY_FILE:
        sender.add_periodic_task(
            settings.BREAKGLASS_CHECKPOINT_SECONDS,
            sender.signature("breakglass.tasks.sign_checkpoint"),
        )
    # Each review becomes overdue at its own time and keeps its own reminder
    # interval: looking every few minutes reminds close to the due time.
    reminder_seconds = settings.BREAKGLASS_REVIEW_REMINDER_HOURS * 3600
    sender.add_periodic_task(
        min(REVIEW_CHECK_SECONDS, reminder_seconds),
        sender.signature("breakglass.tasks.remind_overdue_reviews"),
    )
