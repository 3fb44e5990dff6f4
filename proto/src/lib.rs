//! fleet's wire contract: the generated `fleet.v1` messages and gRPC clients and servers,
//! Prometheus' remote-write messages, etcd's client calls, plus the encoded descriptor set the coordinator serves through gRPC reflection.

#![forbid(unsafe_code)]

/// The `fleet.v1` protobuf package.
pub mod v1 {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("fleet.v1");
}

/// Prometheus' remote-write 1.0 messages (`proto/prometheus/remote.proto`).
pub mod prometheus {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// etcd's v3 API, the calls the coordinators make to it (`proto/etcd/rpc.proto`).
pub mod etcd {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("etcdserverpb");
}

impl v1::ServiceStatus {
    /// Whether the service does what it should: it runs and passes its health check. A
    /// service waiting for its first release counts as neither up nor down (see
    /// [`services_ok`]).
    pub fn is_ok(&self) -> bool {
        self.state == "running" && self.healthy
    }
}

/// (services that are ok, services expected to run) of one host: the `SERVICES` column of
/// `fleetctl hosts` and the status page. A service waiting for its first release has nothing
/// to run yet and is left out of both.
pub fn services_ok(services: &[v1::ServiceStatus]) -> (usize, usize) {
    let expected = services.iter().filter(|s| !s.awaiting_release);
    let (ok, n) = expected.fold((0, 0), |(ok, n), s| (ok + usize::from(s.is_ok()), n + 1));
    (ok, n)
}

/// The protobuf codec every fleet.v1 stream uses: prost's, with smaller starting buffers.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::BufferSettings;
    use tonic_prost::{ProstDecoder, ProstEncoder};

    /// Starting size of a stream's encode and decode buffers. tonic's default is 8 KiB each;
    /// fleet's messages are a few hundred bytes to a few KiB (buffers grow when a message needs
    /// it), and a coordinator holds one long-lived stream per agent, so at 10,000 agents the
    /// default alone would cost 160 MiB.
    pub const BUFFER_SIZE: usize = 1024;

    /// Bytes encoded before a stream yields to other tasks (tonic's default).
    const YIELD_THRESHOLD: usize = 32 * 1024;

    fn settings() -> BufferSettings {
        BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
    }

    /// [`tonic_prost::ProstCodec`] with [`BUFFER_SIZE`] buffers.
    #[derive(Debug)]
    pub struct Codec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for Codec<T, U> {
        fn default() -> Self {
            Codec(PhantomData)
        }
    }

    impl<T, U> tonic::codec::Codec for Codec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::new(settings())
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::new(settings())
        }
    }
}

/// The encoded `FileDescriptorSet` of `fleet.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fleet_v1_descriptor");
