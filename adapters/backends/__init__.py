"""One module per backend. Each defines an `adapters.base.Adapter` subclass decorated with
`@register`; `adapters.base.discover()` imports every module of this package, so adding a backend
is adding one file here (see ADD_BACKEND.md)."""
