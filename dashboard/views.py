import contextlib
import logging

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.shortcuts import redirect
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@login_required
def home(request):
    return redirect("fleets:list")


class LoginView(auth_views.LoginView):
    """Django's login, with failed attempts counted per client address and per username: after
    LOGIN_MAX_FAILURES within LOGIN_LOCKOUT_S the form refuses to check passwords (HTTP 429)."""

    def _keys(self) -> list[str]:
        address = self.request.META.get("REMOTE_ADDR", "")
        username = self.request.POST.get("username", "").strip().lower()[:150]
        return [f"login-failures:addr:{address}", f"login-failures:user:{username}"]

    def _locked(self) -> bool:
        try:
            counts = cache.get_many(self._keys())
        except RedisError:
            log.warning("login rate limiting is off: the cache is unreachable")
            return False
        return any(count >= settings.LOGIN_MAX_FAILURES for count in counts.values())

    def post(self, request, *args, **kwargs):
        if self._locked():
            form = self.get_form()
            form.errors.clear()
            form.add_error(
                None, f"Too many failed sign-ins. Try again in {settings.LOGIN_LOCKOUT_S // 60} minutes."
            )
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        try:
            for key in self._keys():
                cache.add(key, 0, settings.LOGIN_LOCKOUT_S)
                cache.incr(key)
        except (RedisError, ValueError):
            log.warning("could not count a failed sign-in")
        return super().form_invalid(form)

    def form_valid(self, form):
        with contextlib.suppress(RedisError):
            cache.delete_many(self._keys())
        return super().form_valid(form)
