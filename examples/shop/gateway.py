"""gateway: the shop's front door.

POST /checkout (JSON {"user": U, "items": N}, both optional; defaults: U
  random in 1..20, N = 12): orders POST /orders with {"user": U, "items": N}.
  502 if orders answered >= 500, else 200 with orders' body.
GET /dashboard/{user}: in this order, orders GET /orders/recent, payments
  GET /payments/recent, inventory GET /stock/summary, users GET
  /users/{user}, pricing GET /price/list (all five, always). 200, or 502 if
  any answered >= 500.
Anything else: 404, with no call. A bad body is a 400, with no call.
"""
import random

from shoplib import Handler, call, int_part, loads, serve


class Gateway(Handler):
    def route(self, method, parts):
        if method == "POST" and parts == ["checkout"]:
            self.checkout()
            return True
        if method == "GET" and len(parts) == 2 and parts[0] == "dashboard":
            user = int_part(parts[1])
            if user is None:
                return False
            self.dashboard(user)
            return True
        return False

    def checkout(self):
        req = self.json_body()
        if req is None:
            self.reply(400, {"error": "the body is not a JSON object"})
            return
        user = req.get("user", random.randint(1, 20))
        items = req.get("items", 12)
        if not (isinstance(user, int) and user > 0 and isinstance(items, int) and 1 <= items <= 100):
            self.reply(400, {"error": "user must be an int > 0, items an int in 1..100"})
            return
        status, body = call("orders", "POST", "/orders", {"user": user, "items": items})
        if status >= 500:
            self.reply(502, {"error": "orders failed", "status": status})
        else:
            self.reply(200, body)

    def dashboard(self, user):
        calls = [
            ("orders", "/orders/recent"),
            ("payments", "/payments/recent"),
            ("inventory", "/stock/summary"),
            ("users", f"/users/{user}"),
            ("pricing", "/price/list"),
        ]
        parts, failed = {}, []
        for service, path in calls:
            status, body = call(service, "GET", path)
            parts[service] = {"status": status, "body": loads(body)}
            if status >= 500:
                failed.append(service)
        if failed:
            self.reply(502, {"error": "failed: " + ", ".join(failed), "parts": parts})
        else:
            self.reply(200, {"user": user, "parts": parts})


if __name__ == "__main__":
    serve("gateway", Gateway)
