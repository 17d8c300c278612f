package eip.peer;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.function.Predicate;
import java.util.regex.Pattern;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;

/**
 * The Kafka Streams peer of eip's pass-through and router: the same work on the same records,
 * so the benchmark compares the two side by side.
 *
 * <ul>
 *   <li>{@code passthrough}: decode the Confluent-framed Avro with its writer schema from the
 *       registry, check it is an {@code eip.orders.OrderPlaced}, re-encode it framed with the
 *       same id, produce it with the same key and headers.
 *   <li>{@code router}: decode, evaluate the benchmark's rule table (the same predicates as
 *       {@code router_rules} in tests/src/bench.rs), forward the original bytes to the matching
 *       rule's topic with a rules-version header.
 * </ul>
 *
 * <p>Usage: {@code StreamsPeer <passthrough|router> <brokers> <registry> <input> <output>
 * <application.id> <rules> [key=value ...]}; the extra pairs are Kafka Streams or client
 * settings (for example {@code producer.linger.ms=5}). It prints {@code running} once the
 * streams are running and runs until it is killed.
 */
public final class StreamsPeer {
  private static final String TYPE = "eip.orders.OrderPlaced";
  private static final ObjectMapper JSON = new ObjectMapper();

  private StreamsPeer() {}

  public static void main(String[] args) throws Exception {
    String mode = args[0];
    String brokers = args[1];
    Registry registry = new Registry(args[2]);
    String input = args[3];
    String output = args[4];
    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[5]);
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    props.put(StreamsConfig.STATE_DIR_CONFIG, System.getProperty("java.io.tmpdir") + "/" + args[5]);
    props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    // The same producer guarantees as eip's: idempotent, acks=all (Kafka's defaults, stated).
    props.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
    props.put(StreamsConfig.producerPrefix(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG), "true");
    int rules = Integer.parseInt(args[6]);
    for (int i = 7; i < args.length; i++) {
      String[] kv = args[i].split("=", 2);
      props.put(kv[0], kv[1]);
    }

    StreamsBuilder builder = new StreamsBuilder();
    var stream = builder.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()));
    if (mode.equals("passthrough")) {
      stream
          .processValues(() -> new Reencode(registry))
          .to(output, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
    } else {
      Router router = new Router(rules, output);
      stream
          .processValues(() -> new Route(registry, router))
          .to((key, routed, context) -> routed.topic(), Produced.with(Serdes.ByteArray(), Routed.SERDE));
    }
    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    CountDownLatch running = new CountDownLatch(1);
    streams.setStateListener(
        (now, before) -> {
          if (now == KafkaStreams.State.RUNNING) {
            running.countDown();
          }
        });
    streams.setUncaughtExceptionHandler(
        e -> {
          e.printStackTrace();
          System.exit(3);
          return null;
        });
    Runtime.getRuntime().addShutdownHook(new Thread(streams::close));
    streams.start();
    running.await();
    System.out.println("running");
    System.out.flush();
    Thread.currentThread().join();
  }

  /** Writer schemas by registry id, fetched once each. */
  static final class Registry {
    private final String url;
    private final HttpClient http = HttpClient.newHttpClient();
    private final Map<Integer, Schema> byId = new ConcurrentHashMap<>();

    Registry(String url) {
      this.url = url;
    }

    Schema schema(int id) {
      return byId.computeIfAbsent(id, this::fetch);
    }

    private Schema fetch(int id) {
      try {
        HttpRequest request = HttpRequest.newBuilder(URI.create(url + "/schemas/ids/" + id)).build();
        String body = http.send(request, HttpResponse.BodyHandlers.ofString()).body();
        return new Schema.Parser().parse(JSON.readTree(body).get("schema").asText());
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new IllegalStateException(e);
      }
    }
  }

  /** Confluent's wire format: magic byte 0, a 4-byte big-endian schema id, the Avro body. */
  static final class Framed {
    private final Registry registry;
    private final Map<Integer, GenericDatumReader<GenericRecord>> readers = new ConcurrentHashMap<>();
    private final Map<Integer, GenericDatumWriter<GenericRecord>> writers = new ConcurrentHashMap<>();
    private BinaryDecoder decoder;
    private BinaryEncoder encoder;
    private GenericRecord reuse;

    Framed(Registry registry) {
      this.registry = registry;
    }

    int id(byte[] framed) {
      if (framed == null || framed.length < 5 || framed[0] != 0) {
        throw new IllegalArgumentException("not a framed Avro record");
      }
      return ByteBuffer.wrap(framed, 1, 4).getInt();
    }

    /** Decodes and checks the type, as eip's typed decode does. */
    GenericRecord decode(byte[] framed) {
      int id = id(framed);
      GenericDatumReader<GenericRecord> reader =
          readers.computeIfAbsent(id, i -> new GenericDatumReader<>(registry.schema(i)));
      if (!reader.getSchema().getFullName().equals(TYPE)) {
        throw new IllegalArgumentException("expected " + TYPE + ", got " + reader.getSchema().getFullName());
      }
      decoder = DecoderFactory.get().binaryDecoder(framed, 5, framed.length - 5, decoder);
      try {
        reuse = reader.read(reuse, decoder);
        if (!decoder.isEnd()) {
          throw new IllegalArgumentException("bytes left after the record");
        }
        return reuse;
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }

    byte[] encode(int id, GenericRecord record) {
      GenericDatumWriter<GenericRecord> writer =
          writers.computeIfAbsent(id, i -> new GenericDatumWriter<>(registry.schema(i)));
      ByteArrayOutputStream out = new ByteArrayOutputStream(160);
      out.write(0);
      out.write(ByteBuffer.allocate(4).putInt(id).array(), 0, 4);
      encoder = EncoderFactory.get().directBinaryEncoder(out, encoder);
      try {
        writer.write(record, encoder);
        encoder.flush();
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
      return out.toByteArray();
    }
  }

  /** The pass-through: decode, validate, re-encode. */
  static final class Reencode implements FixedKeyProcessor<byte[], byte[], byte[]> {
    private final Framed framed;
    private FixedKeyProcessorContext<byte[], byte[]> context;

    Reencode(Registry registry) {
      this.framed = new Framed(registry);
    }

    @Override
    public void init(FixedKeyProcessorContext<byte[], byte[]> context) {
      this.context = context;
    }

    @Override
    public void process(FixedKeyRecord<byte[], byte[]> record) {
      int id = framed.id(record.value());
      GenericRecord value = framed.decode(record.value());
      context.forward(record.withValue(framed.encode(id, value)));
    }
  }

  /** The router's rule table, evaluated in order; the first match names the topic. */
  static final class Router {
    static final String VERSION = "eip.router.rules-version";
    private final List<Predicate<GenericRecord>> when = new ArrayList<>();
    private final List<String> to = new ArrayList<>();

    /** The shapes of {@code router_rules(n, out)}: n - 1 that match nothing, then a catch-all. */
    Router(int n, String output) {
      for (int i = 0; i < n - 1; i++) {
        final int k = i;
        Predicate<GenericRecord> p;
        switch (i % 5) {
          case 0 -> {
            String currency = String.format("X%02d", k);
            p = r -> str(r.get("currency")).equals(currency) && ((Long) r.get("total_cents")) >= 100;
          }
          case 1 -> {
            List<String> in = List.of("Q" + k, "R" + k, "S" + k);
            p = r -> in.contains(str(((GenericRecord) r.get("shipping_address")).get("country")));
          }
          case 2 -> {
            Pattern regex = Pattern.compile("^vip-" + k + "-");
            p = r -> regex.matcher(str(r.get("customer_id"))).find();
          }
          case 3 -> p = r -> ((Long) r.get("total_cents")) < -k
              || ((GenericRecord) r.get("metadata")).get("aggregate_id") == null;
          default -> {
            String sku = "NONE-" + k;
            p = r -> {
              for (Object line : (List<?>) r.get("lines")) {
                if (str(((GenericRecord) line).get("sku")).equals(sku)) {
                  return true;
                }
              }
              return false;
            };
          }
        }
        when.add(p);
        to.add("t" + i);
      }
      when.add(r -> true);
      to.add(output);
    }

    private static String str(Object o) {
      return o == null ? "" : o.toString();
    }

    String route(GenericRecord record) {
      for (int i = 0; i < when.size(); i++) {
        if (when.get(i).test(record)) {
          return to.get(i);
        }
      }
      return null;
    }
  }

  /** A record on its way to the topic its rule names; only its bytes are written. */
  record Routed(String topic, byte[] bytes) {
    static final Serde<Routed> SERDE =
        Serdes.serdeFrom(
            (topic, routed) -> routed.bytes(),
            (topic, data) -> {
              throw new UnsupportedOperationException("routed records are only written");
            });
  }

  /** The router: decode for the predicates, forward the original bytes. */
  static final class Route implements FixedKeyProcessor<byte[], byte[], Routed> {
    private static final byte[] VERSION = "bench".getBytes(StandardCharsets.UTF_8);
    private final Framed framed;
    private final Router router;
    private FixedKeyProcessorContext<byte[], Routed> context;

    Route(Registry registry, Router router) {
      this.framed = new Framed(registry);
      this.router = router;
    }

    @Override
    public void init(FixedKeyProcessorContext<byte[], Routed> context) {
      this.context = context;
    }

    @Override
    public void process(FixedKeyRecord<byte[], byte[]> record) {
      String to = router.route(framed.decode(record.value()));
      if (to == null) {
        return;
      }
      record.headers().add(Router.VERSION, VERSION);
      context.forward(record.withValue(new Routed(to, record.value())));
    }
  }
}
