//! The protobuf codec of every msfleet service (client and server, set in
//! `build.rs`): prost, with small initial buffers. tonic starts each stream's
//! encode and decode buffer at 8 KiB; an agent's session is one stream held
//! open for good, so at 100,000 agents that is 1.6 GiB for buffers that are
//! nearly always empty. They grow to the largest message they carry
//! (decode reserves exactly a message's length), so only idle cost shrinks.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffer: an idle agent's
/// messages (a heartbeat, an ack) fit; a larger one grows it once (measured
/// with `msfleet-load --scenario scale --scale-agents 100000`: 256 B -> 64 B
/// took 12 MiB off msched).
pub const INITIAL_BUFFER: usize = 64;
/// Encoded bytes after which a streaming response yields to the transport
/// (tonic's default).
pub const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`INITIAL_BUFFER`]-sized buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
