//! Motion by frame differencing, and a centroid tracker that gives moving regions stable ids.
//!
//! Three-frame differencing: a pixel moves when it differs from both of the two previous frames,
//! which marks where a moving object *is* rather than where it was. Moving pixels are grouped on a
//! coarse grid of cells into regions (4-connected components); each region becomes a detection
//! with a normalised `[x, y, w, h]` box. The tracker matches regions to the previous frame's by
//! nearest centroid, so a region keeps its `track_id` while it moves, and zones can follow it.

/// A small greyscale image.
#[derive(Clone, Debug, PartialEq)]
pub struct Grey {
    pub width: usize,
    pub height: usize,
    pub px: Vec<u8>,
}

impl Grey {
    /// Downsamples 8-bit luma rows of `stride` bytes to about `target_width` pixels wide,
    /// averaging each block so noise does not look like motion.
    pub fn from_gray(
        gray: &[u8],
        width: usize,
        height: usize,
        stride: usize,
        target_width: usize,
    ) -> Grey {
        let luma = |x: usize, y: usize| gray[y * stride + x] as u32;
        let step = (width / target_width.max(1)).max(1);
        let (w, h) = (width / step, height / step);
        let mut px = Vec::with_capacity(w * h);
        for by in 0..h {
            for bx in 0..w {
                let mut sum = 0u32;
                for y in by * step..(by + 1) * step {
                    for x in bx * step..(bx + 1) * step {
                        sum += luma(x, y);
                    }
                }
                px.push((sum / (step * step) as u32) as u8);
            }
        }
        Grey {
            width: w,
            height: h,
            px,
        }
    }
}

/// A moving region, normalised to the frame (0..1, top-left origin).
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub bbox: [f64; 4],
    /// Fraction of the region's cells that moved, as a confidence.
    pub fill: f64,
    pub track_id: String,
}

/// Settings of the detector.
#[derive(Clone, Debug)]
pub struct MotionSettings {
    /// Grey-level change that counts as motion.
    pub pixel_delta: u8,
    /// Cell size in pixels of the small image.
    pub cell: usize,
    /// Fraction of a cell's pixels that must move for the cell to count.
    pub cell_fill: f64,
    /// Regions smaller than this fraction of the frame are noise.
    pub min_area: f64,
}

impl Default for MotionSettings {
    fn default() -> Self {
        MotionSettings {
            pixel_delta: 25,
            cell: 4,
            cell_fill: 0.2,
            min_area: 0.001,
        }
    }
}

/// Detects moving regions in successive frames and tracks them.
#[derive(Default)]
pub struct MotionDetector {
    settings: MotionSettings,
    previous: Vec<Grey>,
    tracker: Tracker,
}

impl MotionDetector {
    pub fn new(settings: MotionSettings) -> Self {
        MotionDetector {
            settings,
            previous: Vec::new(),
            tracker: Tracker::default(),
        }
    }

    /// Feeds the next frame; returns its moving regions (none for the first two frames).
    pub fn detect(&mut self, frame: Grey) -> Vec<Region> {
        if self
            .previous
            .first()
            .is_some_and(|p| p.width != frame.width || p.height != frame.height)
        {
            self.previous.clear();
        }
        let regions = match self.previous.as_slice() {
            [older, newer] => self.regions(older, newer, &frame),
            _ => Vec::new(),
        };
        self.previous.push(frame);
        if self.previous.len() > 2 {
            self.previous.remove(0);
        }
        self.tracker.update(regions)
    }

    fn regions(&self, older: &Grey, newer: &Grey, now: &Grey) -> Vec<([f64; 4], f64)> {
        let s = &self.settings;
        let moved = |i: usize| {
            now.px[i].abs_diff(newer.px[i]) > s.pixel_delta
                && now.px[i].abs_diff(older.px[i]) > s.pixel_delta
        };
        let (cw, ch) = (now.width.div_ceil(s.cell), now.height.div_ceil(s.cell));
        let mut active = vec![false; cw * ch];
        for cy in 0..ch {
            for cx in 0..cw {
                let (mut n, mut hits) = (0usize, 0usize);
                for y in cy * s.cell..((cy + 1) * s.cell).min(now.height) {
                    for x in cx * s.cell..((cx + 1) * s.cell).min(now.width) {
                        n += 1;
                        hits += moved(y * now.width + x) as usize;
                    }
                }
                active[cy * cw + cx] = n > 0 && hits as f64 >= s.cell_fill * n as f64;
            }
        }
        let mut seen = vec![false; cw * ch];
        let mut out = Vec::new();
        for start in 0..active.len() {
            if !active[start] || seen[start] {
                continue;
            }
            let (mut x0, mut y0, mut x1, mut y1, mut cells) = (cw, ch, 0, 0, 0usize);
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                let (x, y) = (i % cw, i / cw);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                cells += 1;
                let mut near = Vec::with_capacity(4);
                if x > 0 {
                    near.push(i - 1);
                }
                if x + 1 < cw {
                    near.push(i + 1);
                }
                if y > 0 {
                    near.push(i - cw);
                }
                if y + 1 < ch {
                    near.push(i + cw);
                }
                for j in near {
                    if active[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
            let (bw, bh) = (
                (x1 - x0 + 1) as f64 / cw as f64,
                (y1 - y0 + 1) as f64 / ch as f64,
            );
            if bw * bh < s.min_area {
                continue;
            }
            let fill = cells as f64 / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f64;
            let bbox = [x0 as f64 / cw as f64, y0 as f64 / ch as f64, bw, bh]
                .map(|v| (v.clamp(0.0, 1.0) * 1e4).round() / 1e4);
            out.push((bbox, fill));
        }
        out
    }
}

/// Nearest-centroid tracker.
#[derive(Default)]
struct Tracker {
    tracks: Vec<Track>,
    next_id: u64,
}

struct Track {
    id: u64,
    centre: (f64, f64),
    missed: u32,
}

/// Farthest a region may move between frames and keep its track (fraction of the frame).
const MAX_JUMP: f64 = 0.25;
/// Frames a track survives without a match.
const MAX_MISSED: u32 = 5;

impl Tracker {
    fn update(&mut self, regions: Vec<([f64; 4], f64)>) -> Vec<Region> {
        let centre = |b: &[f64; 4]| (b[0] + b[2] / 2.0, b[1] + b[3] / 2.0);
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (r, (bbox, _)) in regions.iter().enumerate() {
            let c = centre(bbox);
            for (t, track) in self.tracks.iter().enumerate() {
                let d = ((c.0 - track.centre.0).powi(2) + (c.1 - track.centre.1).powi(2)).sqrt();
                if d <= MAX_JUMP {
                    pairs.push((d, r, t));
                }
            }
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut region_track: Vec<Option<usize>> = vec![None; regions.len()];
        let mut matched = vec![false; self.tracks.len()];
        for (_, r, t) in pairs {
            if region_track[r].is_none() && !matched[t] {
                region_track[r] = Some(t);
                matched[t] = true;
            }
        }
        for (t, track) in self.tracks.iter_mut().enumerate() {
            if !matched[t] {
                track.missed += 1;
            }
        }
        let mut out = Vec::with_capacity(regions.len());
        for (r, (bbox, fill)) in regions.into_iter().enumerate() {
            let id = match region_track[r] {
                Some(t) => {
                    let track = &mut self.tracks[t];
                    track.centre = centre(&bbox);
                    track.missed = 0;
                    track.id
                }
                None => {
                    self.next_id += 1;
                    self.tracks.push(Track {
                        id: self.next_id,
                        centre: centre(&bbox),
                        missed: 0,
                    });
                    self.next_id
                }
            };
            out.push(Region {
                bbox,
                fill,
                track_id: format!("m{id}"),
            });
        }
        self.tracks.retain(|t| t.missed <= MAX_MISSED);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 160x90 black frame with a white 12x12 square at (x, y).
    fn frame(x: usize, y: usize) -> Grey {
        let (w, h) = (160, 90);
        let mut px = vec![0u8; w * h];
        for yy in y..y + 12 {
            for xx in x..x + 12 {
                px[yy * w + xx] = 255;
            }
        }
        Grey {
            width: w,
            height: h,
            px,
        }
    }

    #[test]
    fn a_moving_square_is_found_where_it_is_and_keeps_its_track() {
        let mut d = MotionDetector::default();
        assert!(d.detect(frame(10, 40)).is_empty());
        assert!(d.detect(frame(30, 40)).is_empty(), "needs three frames");
        let mut ids = Vec::new();
        for step in 2..7 {
            let x = 10 + step * 20;
            let found = d.detect(frame(x, 40));
            assert_eq!(found.len(), 1, "step {step}: {found:?}");
            let b = found[0].bbox;
            let centre = b[0] + b[2] / 2.0;
            let expected = (x as f64 + 6.0) / 160.0;
            assert!(
                (centre - expected).abs() < 0.04,
                "step {step}: centre {centre} vs {expected}"
            );
            ids.push(found[0].track_id.clone());
        }
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "one track: {ids:?}");
    }

    #[test]
    fn a_still_scene_has_no_motion_and_noise_below_threshold_is_ignored() {
        let mut d = MotionDetector::default();
        for i in 0..5u8 {
            let mut f = frame(50, 40);
            f.px.iter_mut().for_each(|p| *p = p.saturating_add(i % 3));
            assert!(d.detect(f).is_empty());
        }
    }

    #[test]
    fn grey_rows_are_averaged_in_blocks_and_row_padding_is_skipped() {
        // 4x2 pixels in rows of 6 bytes; the padding (99) must not count.
        let gray = [10, 30, 50, 70, 99, 99, 20, 40, 60, 80, 99, 99];
        let g = Grey::from_gray(&gray, 4, 2, 6, 2);
        assert_eq!((g.width, g.height), (2, 1));
        assert_eq!(g.px, vec![25, 65]);
    }
}
