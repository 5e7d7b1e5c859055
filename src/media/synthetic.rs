//! A synthetic IP camera: gst-rtsp-server on loopback serving `videotestsrc pattern=ball`, or a
//! video file played at its own pace (the people detector's test uses a pedestrian video).
//!
//! `heldar demo` records it, and the tests use it as the camera they can stop and restart on the
//! same port. Nothing here is a mock: the daemon talks RTSP to it exactly as to a real camera.
//!
//! ```text
//! /main: videotestsrc is-live pattern=ball ─ WxH@fps ─ x264enc (GOP) ─ rtph264pay
//! /sub:  the same ball at 320x180
//! ```
//!
//! The server runs its own `glib::MainContext` on a dedicated thread, so it needs no default main
//! loop and can be stopped (every client disconnected, the socket closed) and started again.

use std::path::PathBuf;
use std::thread::JoinHandle;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;

/// What the synthetic camera sends.
#[derive(Clone, Debug)]
pub struct SyntheticSpec {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Frames between keyframes.
    pub gop_frames: u32,
    pub bitrate_kbps: u32,
    /// Played once instead of the ball, scaled and re-encoded like the ball; any format
    /// `decodebin` reads.
    pub video: Option<PathBuf>,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            width: 640,
            height: 360,
            fps: 15,
            gop_frames: 15,
            bitrate_kbps: 800,
            video: None,
        }
    }
}

impl SyntheticSpec {
    fn launch(&self, width: u32, height: u32) -> String {
        let source = match &self.video {
            // The RTSP server's sinks pace a file to its timestamps, like a live camera.
            Some(path) => format!(
                "filesrc location=\"{}\" ! decodebin ! videoconvert ! videoscale ! videorate",
                path.display()
            ),
            None => "videotestsrc is-live=true pattern=ball".to_string(),
        };
        format!(
            "( {source} ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 \
             ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={kbps} \
             ! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )",
            fps = self.fps,
            gop = self.gop_frames,
            kbps = self.bitrate_kbps,
        )
    }
}

/// The one role of a camera with a login: whoever logs in may watch.
const ROLE: &str = "viewer";

/// A running (or stopped) synthetic camera; stops on drop.
pub struct SyntheticCamera {
    spec: SyntheticSpec,
    port: u16,
    /// User and password the camera asks for (RTSP basic auth), like a camera out of the box.
    login: Option<(String, String)>,
    running: Option<Running>,
}

struct Running {
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    server: rtsp::RTSPServer,
    source: glib::SourceId,
    thread: JoinHandle<()>,
}

impl SyntheticCamera {
    /// Starts serving on `127.0.0.1:port` (`0` picks a free port).
    pub fn start(spec: SyntheticSpec, port: u16) -> Result<SyntheticCamera, glib::BoolError> {
        Self::start_with(spec, port, None)
    }

    /// Starts serving only to a client that logs in as `user` with `password`.
    pub fn start_with_login(
        spec: SyntheticSpec,
        port: u16,
        user: &str,
        password: &str,
    ) -> Result<SyntheticCamera, glib::BoolError> {
        Self::start_with(spec, port, Some((user.into(), password.into())))
    }

    fn start_with(
        spec: SyntheticSpec,
        port: u16,
        login: Option<(String, String)>,
    ) -> Result<SyntheticCamera, glib::BoolError> {
        gst::init().map_err(|e| glib::bool_error!("GStreamer init: {e}"))?;
        let mut camera = SyntheticCamera {
            spec,
            port,
            login,
            running: None,
        };
        camera.serve()?;
        Ok(camera)
    }

    /// The RTSP URL of a mount: `main` or `sub`.
    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn spec(&self) -> &SyntheticSpec {
        &self.spec
    }

    /// Disconnects every client and closes the listening socket, like a camera losing power.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            // Like a camera losing power: no new connection from this instant, every session
            // dropped, then the loop ends. Done on the server's own thread.
            let (context, server, source, main_loop) =
                (r.context.clone(), r.server, r.source, r.main_loop);
            r.context.invoke(move || {
                if let Some(listening) = context.find_source_by_id(&source) {
                    listening.destroy();
                }
                server.client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
                main_loop.quit();
            });
            let _ = r.thread.join();
        }
    }

    /// Serves again on the same port, like the camera coming back.
    pub fn restart(&mut self) -> Result<(), glib::BoolError> {
        self.stop();
        self.serve()
    }

    fn serve(&mut self) -> Result<(), glib::BoolError> {
        let server = rtsp::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&self.port.to_string());
        let mounts = server
            .mount_points()
            .ok_or_else(|| glib::bool_error!("RTSP server has no mount points"))?;
        for (path, width, height) in [
            ("/main", self.spec.width, self.spec.height),
            ("/sub", 320, 180),
        ] {
            let factory = rtsp::RTSPMediaFactory::new();
            factory.set_launch(&self.spec.launch(width, height));
            factory.set_shared(true);
            if self.login.is_some() {
                factory.add_role_from_structure(
                    &gst::Structure::builder(ROLE)
                        .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                        .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                        .build(),
                );
            }
            mounts.add_factory(path, factory);
        }
        if let Some((user, password)) = &self.login {
            let auth = rtsp::RTSPAuth::new();
            let token = rtsp::RTSPToken::builder()
                .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
                .build();
            auth.add_basic(rtsp::RTSPAuth::make_basic(user, password).as_str(), &token);
            server.set_auth(Some(&auth));
        }
        let context = glib::MainContext::new();
        let source = server.attach(Some(&context))?;
        self.port = u16::try_from(server.bound_port())
            .map_err(|_| glib::bool_error!("RTSP server did not bind"))?;
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let thread = std::thread::Builder::new()
            .name("synthetic-camera".into())
            .spawn({
                let main_loop = main_loop.clone();
                let context = context.clone();
                move || {
                    let guard = context
                        .acquire()
                        .expect("context owned by this thread only");
                    main_loop.run();
                    while context.iteration(false) {}
                    drop(guard);
                }
            })
            .map_err(|e| glib::bool_error!("cannot start the camera thread: {e}"))?;
        self.running = Some(Running {
            context,
            main_loop,
            server,
            source,
            thread,
        });
        Ok(())
    }
}

impl Drop for SyntheticCamera {
    fn drop(&mut self) {
        self.stop();
    }
}
