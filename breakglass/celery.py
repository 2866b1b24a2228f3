"""The Celery application: `celery -A breakglass worker` and `... beat`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "breakglass.settings")

app = Celery("breakglass")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _schedule_sweeps(sender, **kwargs):
    from django.conf import settings

    every = settings.BREAKGLASS_SWEEP_SECONDS
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
