"""Celery tasks: thin wrappers that load by id and call a service."""

import logging

from celery import shared_task

from . import alerts, audit, detection, health, rotation, services
from . import reconcile as reconcile_module

logger = logging.getLogger(__name__)


@shared_task(name="breakglass.tasks.issue_grant")
def issue_grant(grant_id):
    services.issue_grant(grant_id)


@shared_task(name="breakglass.tasks.end_grant")
def end_grant(grant_id):
    services.end_grant(grant_id)


@shared_task(name="breakglass.tasks.rotate_credential")
def rotate_credential(target_id):
    # A failed rotation keeps its due time and its next attempt time; the sweep
    # tries it again then.
    rotation.rotate_credential(target_id)


@shared_task(name="breakglass.tasks.deliver_alert")
def deliver_alert(alert_id):
    # An undelivered alert keeps its row and its next attempt time; the sweep
    # tries it again then, so a lost task loses nothing.
    alerts.deliver(alert_id)


@shared_task(name="breakglass.tasks.reconcile", expires=300)
def reconcile():
    counts = reconcile_module.reconcile_targets()
    if counts["orphans"]:
        logger.warning("reconcile: %s", counts)


@shared_task(name="breakglass.tasks.sweep", expires=60)
def sweep():
    counts = services.sweep()
    if any(counts.values()):
        logger.info("sweep: %s", counts)


@shared_task(name="breakglass.tasks.detect_uses", expires=10)
def detect_uses():
    found = detection.detect_uses()
    if found:
        logger.info("detection: %s new uses", found)


@shared_task(name="breakglass.tasks.verify_trail", expires=600)
def verify_trail():
    audit.verify_and_record()


@shared_task(name="breakglass.tasks.sign_checkpoint", expires=600)
def sign_checkpoint():
    audit.sign_checkpoint()


@shared_task(name="breakglass.tasks.remind_overdue_reviews", expires=300)
def remind_overdue_reviews():
    reminded = services.remind_overdue_reviews()
    if reminded:
        logger.info("reviews: %s requesters reminded", reminded)


@shared_task(name="breakglass.tasks.heartbeat", bind=True)
def heartbeat(self):
    health.record_heartbeat(self.request.hostname or "unknown")
