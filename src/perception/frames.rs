//! The latest sampled frame of each (camera, profile), held in memory with its capture time.
//!
//! No frame is written to disk (flash wear). A frame is kept as RGB; its JPEG (and its grey
//! plane) is made the first time someone asks for it, at most once however many workers read
//! it, and never for frames nobody reads. Workers on the box can take the RGB or grey pixels as
//! they are ([`FrameFormat`]): encoding and decoding a JPEG costs both sides far more than
//! handing over the bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use super::CameraStream;
use crate::config::model::StreamProfile;

/// JPEG quality of served frames: what detectors see, so detail matters more than bytes.
const JPEG_QUALITY: u8 = 85;

/// Why a frame could not be served as JPEG.
#[derive(Clone, Debug, thiserror::Error)]
pub enum JpegError {
    #[error("frame {width}x{height} is larger than JPEG allows (65535 per side)")]
    TooLarge { width: u32, height: u32 },
    #[error("JPEG encoding failed: {0}")]
    Encoder(Arc<jpeg_encoder::EncodingError>),
    #[error("preparing the frame stopped abnormally: {0}")]
    Aborted(String),
}

/// How a worker wants a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameFormat {
    Jpeg,
    /// Packed 8-bit R, G, B, rows of `width * 3` bytes, top row first.
    Rgb,
    /// 8-bit luma (Rec. 601), rows of `width` bytes: a third of the bytes, for detectors that
    /// work in grey.
    Gray,
}

impl FrameFormat {
    /// The `format=` value of the frame route.
    pub fn parse(value: &str) -> Option<FrameFormat> {
        match value {
            "jpeg" => Some(FrameFormat::Jpeg),
            "rgb" => Some(FrameFormat::Rgb),
            "gray" => Some(FrameFormat::Gray),
            _ => None,
        }
    }

    /// The name the `x-frame-format` header gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameFormat::Jpeg => "jpeg",
            FrameFormat::Rgb => "rgb24",
            FrameFormat::Gray => "gray8",
        }
    }
}

/// One decoded frame.
pub struct Frame {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Wall clock of the frame at the camera (its RTP time mapped to our clock), Unix ms.
    pub captured_ms: i64,
    jpeg: OnceLock<Result<Arc<Vec<u8>>, JpegError>>,
    gray: OnceLock<Arc<Vec<u8>>>,
}

impl Frame {
    pub fn new(rgb: Vec<u8>, width: u32, height: u32, captured_ms: i64) -> Frame {
        Frame {
            rgb,
            width,
            height,
            captured_ms,
            jpeg: OnceLock::new(),
            gray: OnceLock::new(),
        }
    }

    /// The grey plane, made now if nobody asked before. Blocking: CPU work (about a millisecond
    /// for 1280x720).
    pub fn gray(&self) -> Arc<Vec<u8>> {
        self.gray
            .get_or_init(|| {
                let luma = self
                    .rgb
                    .chunks_exact(3)
                    .map(|p| {
                        // Integer Rec. 601: 0.299 R + 0.587 G + 0.114 B, rounded.
                        ((77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32 + 128) >> 8) as u8
                    })
                    .collect();
                Arc::new(luma)
            })
            .clone()
    }
}

/// Latest frames of every sampler; cheap to clone.
#[derive(Clone, Default)]
pub struct FrameStore {
    frames: Arc<RwLock<HashMap<CameraStream, Arc<Frame>>>>,
    encodes: Arc<AtomicU64>,
}

impl FrameStore {
    pub fn publish(&self, camera_id: &str, profile: StreamProfile, frame: Frame) {
        self.lock_write()
            .insert((camera_id.to_string(), profile), Arc::new(frame));
    }

    pub fn latest(&self, camera_id: &str, profile: StreamProfile) -> Option<Arc<Frame>> {
        self.frames
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(camera_id.to_string(), profile))
            .cloned()
    }

    /// Forgets a sampler's frame (its sampler stopped): a stale frame must not be served.
    pub fn remove(&self, camera_id: &str, profile: StreamProfile) {
        self.lock_write().remove(&(camera_id.to_string(), profile));
    }

    /// The frame as JPEG, encoded now if nobody asked before. Blocking: CPU work.
    pub fn jpeg(&self, frame: &Frame) -> Result<Arc<Vec<u8>>, JpegError> {
        frame
            .jpeg
            .get_or_init(|| {
                self.encodes.fetch_add(1, Ordering::Relaxed);
                let mut out = Vec::with_capacity(frame.rgb.len() / 8);
                let too_large = || JpegError::TooLarge {
                    width: frame.width,
                    height: frame.height,
                };
                let w = u16::try_from(frame.width).map_err(|_| too_large())?;
                let h = u16::try_from(frame.height).map_err(|_| too_large())?;
                jpeg_encoder::Encoder::new(&mut out, JPEG_QUALITY)
                    .encode(&frame.rgb, w, h, jpeg_encoder::ColorType::Rgb)
                    .map_err(|e| JpegError::Encoder(Arc::new(e)))?;
                Ok(Arc::new(out))
            })
            .clone()
    }

    /// JPEG encodings so far, for the metric that proves "once per frame".
    pub fn encodes(&self) -> u64 {
        self.encodes.load(Ordering::Relaxed)
    }

    fn lock_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<CameraStream, Arc<Frame>>> {
        self.frames.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_encoded_once_however_often_it_is_read() {
        let store = FrameStore::default();
        store.publish(
            "gate",
            StreamProfile::Sub,
            Frame::new(vec![128; 64 * 48 * 3], 64, 48, 1),
        );
        let frame = store.latest("gate", StreamProfile::Sub).unwrap();
        let a = store.jpeg(&frame).unwrap();
        let b = store.jpeg(&frame).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&a[..2], &[0xFF, 0xD8]);
        assert_eq!(store.encodes(), 1);
        assert!(store.latest("gate", StreamProfile::Main).is_none());
    }

    #[test]
    fn the_grey_plane_is_the_luma_of_each_pixel_made_once() {
        let rgb = [
            255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30,
        ];
        let frame = Frame::new(rgb.to_vec(), 3, 2, 1);
        let gray = frame.gray();
        assert_eq!(*gray, vec![255, 0, 77, 149, 29, 18]);
        assert!(Arc::ptr_eq(&gray, &frame.gray()));
    }
}
