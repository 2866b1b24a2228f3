"""The product's roles, kept as Django groups of the same name."""

REQUESTER = "requester"
APPROVER = "approver"
COMPLIANCE = "compliance"
ADMIN = "admin"
ROLES = (REQUESTER, APPROVER, COMPLIANCE, ADMIN)


def has_role(user, role):
    """Return whether the user holds the role; admins are superusers."""
    if not user.is_authenticated or not user.is_active:
        return False
    if role == ADMIN:
        return user.is_superuser
    return user.groups.filter(name=role).exists()


def group_names(user):
    return set(user.groups.values_list("name", flat=True))
