"""orders: POST /orders, GET /orders/recent, GET /orders/count/{user}.

POST /orders (JSON {"user": U, "items": N}, defaults user 1, items 12):
  a. users GET /users/{U};
  b. inventory GET /stock/{i} for i = 1..N, one call each (the chatty edge);
  c. INSERT INTO orders (PostgreSQL);
  d. payments POST /payments {"order": id, "user": U};
     if payments answered >= 500: 502, and no publish;
  e. Redis PUBLISH order-events <id>; 201.
  If users or inventory answers >= 500 the order stops there with a 502;
  a user users does not know (404) stops it with a 404.
GET /orders/recent: SELECT the last 10 orders.
GET /orders/count/{user}: SELECT count(*) of the user's orders. No call.
"""
from shoplib import Handler, Pool, call, int_part, loads, redis_client, serve

CHANNEL = "order-events"

db = None
events = None


def rows(cur_rows):
    return [
        {"id": r[0], "user": r[1], "items": r[2], "status": r[3], "created": r[4].isoformat()}
        for r in cur_rows
    ]


class Orders(Handler):
    def route(self, method, parts):
        if method == "POST" and parts == ["orders"]:
            self.create()
            return True
        if method == "GET" and parts == ["orders", "recent"]:
            recent = db.all(
                "SELECT id, user_id, items, status, created FROM orders ORDER BY id DESC LIMIT 10"
            )
            self.reply(200, rows(recent))
            return True
        if method == "GET" and len(parts) == 3 and parts[:2] == ["orders", "count"]:
            uid = int_part(parts[2])
            if uid is None:
                return False
            (count,) = db.one("SELECT count(*) FROM orders WHERE user_id = %s", (uid,))
            self.reply(200, {"user": uid, "count": count})
            return True
        return False

    def create(self):
        req = self.json_body()
        if req is None:
            self.reply(400, {"error": "the body is not a JSON object"})
            return
        user, items = req.get("user", 1), req.get("items", 12)
        if not (isinstance(user, int) and user > 0 and isinstance(items, int) and 1 <= items <= 100):
            self.reply(400, {"error": "user must be an int > 0, items an int in 1..100"})
            return
        # (a) the customer
        status, body = call("users", "GET", f"/users/{user}")
        if status >= 500:
            self.reply(502, {"error": "users failed", "status": status})
            return
        if status != 200:
            self.reply(404, {"error": "no such user", "user": user})
            return
        # (b) one call per item
        for item in range(1, items + 1):
            status, _ = call("inventory", "GET", f"/stock/{item}")
            if status >= 500:
                self.reply(502, {"error": "inventory failed", "item": item, "status": status})
                return
        # (c) the order
        (order,) = db.one(
            "INSERT INTO orders (user_id, items, status) VALUES (%s, %s, 'new') RETURNING id",
            (user, items),
        )
        # (d) the payment
        status, body = call("payments", "POST", "/payments", {"order": order, "user": user})
        if status >= 500:
            self.reply(502, {"error": "payment failed", "order": order, "status": status})
            return
        # (e) the event
        events.publish(CHANNEL, str(order))
        self.reply(201, {"order": order, "user": user, "items": items, "payment": loads(body)})


if __name__ == "__main__":
    db = Pool(4)
    events = redis_client()
    serve("orders", Orders)
