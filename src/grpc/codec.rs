//! The contract's codec: prost, except that a request that is not valid
//! protobuf is the caller's error (`INVALID_ARGUMENT`, reason
//! `INVALID_MESSAGE`), not the server's (`INTERNAL`, as prost's codec says),
//! and that responses start from a small buffer.

use std::collections::HashMap;
use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::status::reason_status;
use crate::jobs::ErrorReason;

/// A response's encoding buffer starts small and grows with the message:
/// every open stream keeps one, and tonic's default is 8 KiB.
fn encoder_buffer() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(encoder_buffer())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
    }
}

pub struct StrictDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|_| {
            reason_status(
                ErrorReason::InvalidMessage,
                "the request is not a valid protobuf message of this method's type",
                HashMap::new(),
                |_| {},
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
