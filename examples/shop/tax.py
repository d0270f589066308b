"""tax: GET /tax/{region} -> the region's tax rate. A leaf: no calls.

Answers 503 while the file DIR/tax.fail exists (DIR = env SHOP_DIR).
"""
from shoplib import Handler, int_part, serve, state_dir, toggle

RATES = [0.20, 0.19, 0.21, 0.10, 0.07]


class Tax(Handler):
    def route(self, method, parts):
        if method == "GET" and len(parts) == 2 and parts[0] == "tax" and parts[1].isdigit():
            region = int(parts[1])
            if region >= len(RATES):
                return False
            if toggle("tax.fail"):
                self.reply(503, {"error": "tax service unavailable (tax.fail)"})
            else:
                self.reply(200, {"region": region, "rate": RATES[region]})
            return True
        return False


if __name__ == "__main__":
    state_dir()
    serve("tax", Tax)
