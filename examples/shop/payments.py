"""payments: POST /payments, GET /payments/recent.

POST /payments (JSON {"order": id, "user": U}):
  1. only while the file DIR/fraud.on exists: fraud POST /fraud/check;
  2. pricing GET /price/{order};
     if fraud or pricing answered >= 500: 502, nothing written;
  3. INSERT INTO payments, then UPDATE orders SET status = 'paid'
     (the table orders is written by two services); 201.
GET /payments/recent: SELECT the last 10 payments.
"""
from decimal import Decimal

from shoplib import Handler, Pool, call, int_part, loads, serve, state_dir, toggle

db = None


class Payments(Handler):
    def route(self, method, parts):
        if method == "POST" and parts == ["payments"]:
            self.pay()
            return True
        if method == "GET" and parts == ["payments", "recent"]:
            recent = db.all(
                "SELECT id, order_id, amount, created FROM payments ORDER BY id DESC LIMIT 10"
            )
            self.reply(
                200,
                [
                    {"id": r[0], "order": r[1], "amount": str(r[2]), "created": r[3].isoformat()}
                    for r in recent
                ],
            )
            return True
        return False

    def pay(self):
        req = self.json_body() or {}
        order, user = req.get("order"), req.get("user")
        if not (isinstance(order, int) and order > 0):
            self.reply(400, {"error": "order must be an int > 0"})
            return
        if toggle("fraud.on"):
            status, _ = call("fraud", "POST", "/fraud/check", {"order": order, "user": user})
            if status >= 500:
                self.reply(502, {"error": "fraud check failed", "status": status})
                return
        status, body = call("pricing", "GET", f"/price/{order}")
        if status >= 500:
            self.reply(502, {"error": "pricing failed", "status": status})
            return
        price = loads(body)
        amount = Decimal(str(price.get("total", 0))) if isinstance(price, dict) else Decimal(0)
        with db.connection() as conn:
            (payment,) = conn.execute(
                "INSERT INTO payments (order_id, amount) VALUES (%s, %s) RETURNING id",
                (order, amount),
            ).fetchone()
            conn.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order,))
        self.reply(201, {"payment": payment, "order": order, "amount": str(amount)})


if __name__ == "__main__":
    state_dir()
    db = Pool(4)
    serve("payments", Payments)
