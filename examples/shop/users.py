"""users: GET /users/{id}.

  1. Redis GET user:{id} (the cache);
  2. on a miss, SELECT from table users (PostgreSQL), then Redis SETEX
     user:{id} 30 s;
  3. orders GET /orders/count/{id} (orders -> users -> orders: a cycle
     during checkout).

An id with no row is a 404, after steps 1 and 2 (SELECT only), with no
SETEX and no call to orders.
"""
import json

from shoplib import Handler, Pool, call, int_part, loads, redis_client, serve

CACHE_TTL = 30  # seconds

db = None
cache = None


class Users(Handler):
    def route(self, method, parts):
        if method == "GET" and len(parts) == 2 and parts[0] == "users":
            uid = int_part(parts[1])
            if uid is None:
                return False
            key = f"user:{uid}"
            cached = cache.get(key)
            if cached is not None:
                user = json.loads(cached)
            else:
                row = db.one('SELECT id, "prénom", name FROM users WHERE id = %s', (uid,))
                if row is None:
                    self.reply(404, {"error": "no such user", "user": uid})
                    return True
                user = {"id": row[0], "prénom": row[1], "name": row[2]}
                # SETEX itself (redis-py 8 deprecates its setex() for set(ex=...)).
                cache.execute_command("SETEX", key, CACHE_TTL, json.dumps(user, ensure_ascii=False))
            status, body = call("orders", "GET", f"/orders/count/{uid}")
            if status >= 500:
                self.reply(502, {"error": "orders failed", "status": status})
                return True
            user["orders"] = loads(body).get("count") if status == 200 else None
            self.reply(200, user)
            return True
        return False


if __name__ == "__main__":
    db = Pool(4)
    cache = redis_client()
    serve("users", Users)
