"""Corrections to the generated OpenAPI document, applied after drf-spectacular."""


def empty_filters_are_absent(result, generator, request, public):
    """Mark optional query filters as accepting an empty value.

    An empty filter, as an HTML form sends it, means no filter: `?status=` lists
    everything, as if `status` were not given.
    """
    for path in result.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and not parameter.get("required"):
                    parameter["allowEmptyValue"] = True
    return result
