"""The `breakglass` command: the on-call engineer's client for the REST API.

It speaks HTTP only and never imports the Django project, so that it runs on a
laptop with nothing but the package installed.
"""
