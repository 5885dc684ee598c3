// Run with the single-file source launcher: java /app/Hello.java
import java.util.stream.IntStream;
import java.security.MessageDigest;

public class Hello {
    public static void main(String[] args) throws Exception {
        int s = IntStream.rangeClosed(1, 10).sum();
        byte[] d = MessageDigest.getInstance("SHA-256").digest(("hello" + s).getBytes("UTF-8"));
        System.out.printf("hello from java %s %02x%02x%n", System.getProperty("java.version"), d[0], d[1]);
    }
}
