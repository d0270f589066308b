-- The shop's database (PostgreSQL 15, database "shop", owner "shop").
-- Loaded by shop.py after initdb; safe to load again (IF NOT EXISTS, ON CONFLICT).
SET client_encoding = 'UTF8';

CREATE TABLE IF NOT EXISTS users (
    id       int PRIMARY KEY,
    "prénom" text,
    name     text
);

INSERT INTO users (id, "prénom", name) VALUES
    (1, 'Zoé', 'Martin'),
    (2, 'Jérôme', 'Bernard'),
    (3, 'Héloïse', 'Dubois'),
    (4, 'Anaïs', 'Thomas'),
    (5, 'Noël', 'Robert'),
    (6, 'Chloé', 'Richard'),
    (7, 'Inès', 'Petit'),
    (8, 'Gaël', 'Durand'),
    (9, 'Léa', 'Leroy'),
    (10, 'André', 'Moreau'),
    (11, 'Céline', 'Simon'),
    (12, 'François', 'Laurent'),
    (13, 'Hélène', 'Lefèvre'),
    (14, 'Maëlle', 'Michel'),
    (15, 'Raphaël', 'Garcia'),
    (16, 'Élodie', 'David'),
    (17, 'Joël', 'Bertrand'),
    (18, 'Loïc', 'Roux'),
    (19, 'Bérénice', 'Vincent'),
    (20, 'Clément', 'Fournier')
ON CONFLICT (id) DO NOTHING;

-- Written by orders (INSERT) and by payments (UPDATE ... SET status = 'paid').
CREATE TABLE IF NOT EXISTS orders (
    id      serial PRIMARY KEY,
    user_id int,
    items   int,
    status  text,
    created timestamptz DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_user_id ON orders (user_id);

-- Written by payments.
CREATE TABLE IF NOT EXISTS payments (
    id       serial PRIMARY KEY,
    order_id int,
    amount   numeric,
    created  timestamptz DEFAULT now()
);
