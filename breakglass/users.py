"""Who may request, approve or administer: changes to it are kept in the trail.

A person added to an approver group can vote on every request that group
approves; an auditor must be able to see when that happened and who did it.
"""

from . import audit

FLAGS = ("is_active", "is_staff", "is_superuser")


def access_of(user):
    """Return what decides the user's access: their groups and account flags."""
    access = {flag: getattr(user, flag) for flag in FLAGS}
    access["groups"] = sorted(user.groups.values_list("name", flat=True))
    return access


def record_access_change(user, before, *, actor):
    """Record how the user's access changed since `before` (None: just created).

    Call inside the change's transaction, after the groups are saved; records
    nothing when nothing that decides access changed.
    """
    after = access_of(user)
    data = {"user": user.get_username()}
    if before is None:
        action = "user.created"
        data.update(after)
    else:
        added = sorted(set(after["groups"]) - set(before["groups"]))
        removed = sorted(set(before["groups"]) - set(after["groups"]))
        if added:
            data["groups_added"] = added
        if removed:
            data["groups_removed"] = removed
        data.update({f: after[f] for f in FLAGS if before[f] != after[f]})
        if len(data) == 1:
            return None
        action = "user.changed"
    return audit.record_event(action, actor=actor, data=data)


def record_removal(user, *, actor):
    """Record that the user was deleted, with the access they had."""
    data = {"user": user.get_username(), **access_of(user)}
    return audit.record_event("user.removed", actor=actor, data=data)
