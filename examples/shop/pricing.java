// pricing: GET /price/{id} and GET /price/list. Java 17, one file, run as
// `java pricing.java` (source-file mode).
//
// GET /price/{id}: tax GET /tax/{id % 5}; 502 if tax answered >= 500, else 200.
// GET /price/list: 200, no call.
//
// The JDK's com.sun.net.httpserver.HttpServer with a fixed pool of 16
// threads (a request is read and handled on one of them), bound to
// 127.0.0.1: Java's sockets are IPv6 ones, so the listener is
// [::ffff:127.0.0.1]:18103. Outbound with java.net.HttpURLConnection and
// its keep-alive cache: connections to tax are reused.

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.Locale;
import java.util.concurrent.Executors;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class Pricing {
    static final int PORT = 18103;
    static final String TAX = "http://127.0.0.1:18104/tax/";
    static final Pattern PRICE = Pattern.compile("/price/([1-9][0-9]{0,8})");
    static final Pattern RATE = Pattern.compile("\"rate\"\\s*:\\s*([0-9.]+)");

    public static void main(String[] args) throws IOException {
        // Headers and body in one go, not held back by Nagle's algorithm.
        System.setProperty("sun.net.httpserver.nodelay", "true");
        HttpServer server = HttpServer.create(
                new InetSocketAddress(InetAddress.getByName("127.0.0.1"), PORT), 1024);
        server.setExecutor(Executors.newFixedThreadPool(16));
        server.createContext("/", Pricing::handle);
        server.start();
        System.err.println("pricing: listening on 127.0.0.1:" + PORT);
    }

    static void handle(HttpExchange ex) throws IOException {
        try (ex) {
            ex.getRequestBody().readAllBytes(); // drain any body
            String path = ex.getRequestURI().getPath();
            Matcher m = PRICE.matcher(path);
            if (!ex.getRequestMethod().equals("GET")) {
                reply(ex, 404, "{\"error\": \"not found\"}");
            } else if (path.equals("/price/list")) {
                StringBuilder sb = new StringBuilder("[");
                for (int sku = 1; sku <= 5; sku++) {
                    if (sku > 1) sb.append(", ");
                    sb.append(String.format(Locale.ROOT, "{\"sku\": %d, \"price\": %.2f}", sku, base(sku)));
                }
                reply(ex, 200, sb.append("]").toString());
            } else if (m.matches()) {
                price(ex, Long.parseLong(m.group(1)));
            } else {
                reply(ex, 404, "{\"error\": \"not found\"}");
            }
        } catch (Exception e) {
            System.err.println("pricing: " + e);
        }
    }

    static double base(long id) {
        return 10 + (id * 7) % 90;
    }

    static void price(HttpExchange ex, long id) throws IOException {
        long region = id % 5;
        int status;
        String body;
        try {
            HttpURLConnection c = (HttpURLConnection) new URL(TAX + region).openConnection();
            c.setConnectTimeout(5000);
            c.setReadTimeout(30000);
            status = c.getResponseCode();
            // Read the whole body, error or not, and close it: the connection
            // then goes back to the keep-alive cache (no disconnect()).
            InputStream in = status >= 400 ? c.getErrorStream() : c.getInputStream();
            if (in == null) {
                body = "";
            } else {
                try (in) {
                    body = new String(in.readAllBytes(), StandardCharsets.UTF_8);
                }
            }
        } catch (IOException e) {
            System.err.println("pricing: tax: " + e);
            status = 503;
            body = "";
        }
        if (status >= 500) {
            reply(ex, 502, "{\"error\": \"tax failed\", \"status\": " + status + "}");
            return;
        }
        Matcher r = RATE.matcher(body);
        double rate = r.find() ? Double.parseDouble(r.group(1)) : 0;
        double base = base(id);
        reply(ex, 200, String.format(Locale.ROOT,
                "{\"id\": %d, \"region\": %d, \"price\": %.2f, \"rate\": %.2f, \"total\": %.2f}",
                id, region, base, rate, base * (1 + rate)));
    }

    static void reply(HttpExchange ex, int status, String body) throws IOException {
        byte[] data = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        ex.sendResponseHeaders(status, data.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(data);
        }
    }
}
