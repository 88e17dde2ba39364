from devices import public_url


class PublicDeviceUrlMiddleware:
    """Answers requests for http://<uuid>.<PUBLIC_URL_DOMAIN>/ before anything of the dashboard runs:
    no session, no CSRF, no dashboard page is ever served on a device's host name. Other names
    under the domain are device space too: they get the "No public URL here" page, never the
    dashboard (which would then share a site, and cookies set for the domain, with device pages)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.pattern = public_url.host_pattern()

    def __call__(self, request):
        match = self.pattern.fullmatch(request.META.get("HTTP_HOST", ""))
        if match:
            return public_url.proxy(request, match["name"])
        return self.get_response(request)
