"""
gRPC over HTTP/2 in the reactor: the transport an unmodified
prometheus-proxy agent speaks (upstream's C{ProxyService}, whose messages
are L{promtwist.grpc.proxy_service_pb2}).

  - L{promtwist.grpc.connection}: the server protocol, C{h2}'s state
    machine driven by C{dataReceived}, and its factory;
  - L{promtwist.grpc.client}: the client protocol, for one call;
  - L{promtwist.grpc.h2conn}: what both protocols do alike with their
    HTTP/2 connection (opening it, backpressure, flood bounds, closing);
  - L{promtwist.grpc.service}: the four kinds of method a handler is
    written as;
  - L{promtwist.grpc.call}: one call as its handler sees it;
  - L{promtwist.grpc.inbox}: what either end's call received and has not
    taken;
  - L{promtwist.grpc.messages}: gRPC's length-prefixed messages, gzip;
  - L{promtwist.grpc.status}: status codes and the encodings of
    C{grpc-message} and C{grpc-timeout};
  - L{promtwist.grpc.limits}: what one connection may cost.

See C{docs/grpc.md} for what the transport accepts.
"""
