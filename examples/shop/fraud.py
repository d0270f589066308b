"""fraud: POST /fraud/check -> a verdict. A leaf: no calls.

Called by payments only while the file DIR/fraud.on exists.
"""
from shoplib import Handler, serve


class Fraud(Handler):
    def route(self, method, parts):
        if method == "POST" and parts == ["fraud", "check"]:
            check = self.json_body() or {}
            order = check.get("order")
            score = (order * 37 % 100) / 100 if isinstance(order, int) else 0.0
            self.reply(200, {"order": order, "score": score, "ok": True})
            return True
        return False


if __name__ == "__main__":
    serve("fraud", Fraud)
