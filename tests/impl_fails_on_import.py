"""A module that cannot be imported (not with ImportError): `--impl impl_fails_on_import:fn`
must be a setup error naming the spec."""

raise RuntimeError("deliberate failure at import")


def fn(*args, **kwargs):  # never reached
    raise AssertionError
