//! Stream URLs of a camera: explicit ones, or built from the vendor's template.
//!
//! The user name and password are not part of these URLs (a URL's `user:pass@` is split off
//! where it arrives): the pipeline hands them to `rtspsrc` through its `user-id`/`user-pw`
//! properties, so nothing needs percent-encoding. Credentials a vendor wants in the query do stay
//! in the URL, so every URL that reaches a log line or an answer goes through
//! [`crate::config::secret::redact_url`] (invariant M3).

use crate::config::model::{CameraConfig, StreamProfile, Vendor};

/// `host[:port]` of a URL, without user-info: what a connection goes to.
pub fn host_port(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    rest.split(['/', '?', '#']).next()?.rsplit('@').next()
}

/// The camera's own web page: its stream's host over HTTP, the link Home Assistant shows on
/// the camera's device. Only the host is taken, so nothing of the URL's credentials goes with it.
pub fn camera_page(stream_url: &str) -> Option<String> {
    let host_port = host_port(stream_url)?;
    let host = match host_port.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next()?),
        None => host_port.split(':').next()?.to_string(),
    };
    (!host.is_empty()).then(|| format!("http://{host}/"))
}

/// The URL of one stream of a camera. `sub` falls back to the main stream when the camera has no
/// sub stream, so a task asking for `sub` still gets frames.
pub fn stream_url(camera: &CameraConfig, profile: StreamProfile) -> Option<String> {
    if let Some(main) = &camera.url {
        return Some(match profile {
            StreamProfile::Main => main.clone(),
            StreamProfile::Sub => camera.sub_url.clone().unwrap_or_else(|| main.clone()),
        });
    }
    let (vendor, host) = (camera.vendor?, camera.address.as_deref()?);
    let port = camera.port.unwrap_or(554);
    let ch = camera.channel.unwrap_or(1);
    let main = matches!(profile, StreamProfile::Main);
    let path = match vendor {
        Vendor::Hikvision => format!("/Streaming/Channels/{ch}0{}", if main { 1 } else { 2 }),
        Vendor::Dahua | Vendor::Amcrest => {
            format!(
                "/cam/realmonitor?channel={ch}&subtype={}",
                if main { 0 } else { 1 }
            )
        }
        Vendor::Axis => {
            if main {
                format!("/axis-media/media.amp?camera={ch}")
            } else {
                format!("/axis-media/media.amp?camera={ch}&resolution=640x360")
            }
        }
        Vendor::Reolink => format!("/h264Preview_{ch:02}_{}", if main { "main" } else { "sub" }),
        Vendor::Onvif => format!("/onvif{}", if main { 1 } else { 2 }),
    };
    Some(format!("rtsp://{host}:{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor_camera(vendor: &str) -> CameraConfig {
        toml::from_str(&format!(
            "id = \"c\"\naddress = \"10.0.0.9\"\nvendor = \"{vendor}\""
        ))
        .unwrap()
    }

    #[test]
    fn a_camera_page_is_its_stream_host_over_http() {
        assert_eq!(
            camera_page("rtsp://10.0.0.5:554/x").as_deref(),
            Some("http://10.0.0.5/")
        );
        assert_eq!(
            camera_page("rtsps://u:p@[fe80::1]:322/x").as_deref(),
            Some("http://[fe80::1]/")
        );
        assert_eq!(camera_page("not a url"), None);
    }

    #[test]
    fn vendor_templates() {
        let cases = [
            (
                "hikvision",
                "rtsp://10.0.0.9:554/Streaming/Channels/101",
                "rtsp://10.0.0.9:554/Streaming/Channels/102",
            ),
            (
                "dahua",
                "rtsp://10.0.0.9:554/cam/realmonitor?channel=1&subtype=0",
                "rtsp://10.0.0.9:554/cam/realmonitor?channel=1&subtype=1",
            ),
            (
                "amcrest",
                "rtsp://10.0.0.9:554/cam/realmonitor?channel=1&subtype=0",
                "rtsp://10.0.0.9:554/cam/realmonitor?channel=1&subtype=1",
            ),
            (
                "axis",
                "rtsp://10.0.0.9:554/axis-media/media.amp?camera=1",
                "rtsp://10.0.0.9:554/axis-media/media.amp?camera=1&resolution=640x360",
            ),
            (
                "reolink",
                "rtsp://10.0.0.9:554/h264Preview_01_main",
                "rtsp://10.0.0.9:554/h264Preview_01_sub",
            ),
            (
                "onvif",
                "rtsp://10.0.0.9:554/onvif1",
                "rtsp://10.0.0.9:554/onvif2",
            ),
        ];
        for (vendor, main, sub) in cases {
            let cam = vendor_camera(vendor);
            assert_eq!(stream_url(&cam, StreamProfile::Main).unwrap(), main);
            assert_eq!(stream_url(&cam, StreamProfile::Sub).unwrap(), sub);
        }
    }

    #[test]
    fn sub_falls_back_to_main_and_channels_and_ports_apply() {
        let cam: CameraConfig = toml::from_str("id = \"c\"\nurl = \"rtsp://h/main\"").unwrap();
        assert_eq!(
            stream_url(&cam, StreamProfile::Sub).unwrap(),
            "rtsp://h/main"
        );
        let hik: CameraConfig = toml::from_str(
            "id = \"c\"\nvendor = \"hikvision\"\naddress = \"nvr.lan\"\nport = 8554\nchannel = 3",
        )
        .unwrap();
        assert_eq!(
            stream_url(&hik, StreamProfile::Sub).unwrap(),
            "rtsp://nvr.lan:8554/Streaming/Channels/302"
        );
    }
}
