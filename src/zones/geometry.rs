//! Plane geometry in normalised image coordinates (0..1, top-left origin).

/// A point `(x, y)`.
pub type Point = (f64, f64);

/// Tolerance for "on the line" tests; far below a pixel of any camera.
const EPS: f64 = 1e-12;

/// `(b - a) × (c - a)`: positive when `c` is to the left of `a → b` in image coordinates'
/// mathematical orientation, negative when to the right, zero when collinear.
pub fn cross(a: Point, b: Point, c: Point) -> f64 {
    (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0)
}

fn on_segment(a: Point, b: Point, p: Point) -> bool {
    cross(a, b, p).abs() <= EPS
        && p.0 >= a.0.min(b.0) - EPS
        && p.0 <= a.0.max(b.0) + EPS
        && p.1 >= a.1.min(b.1) - EPS
        && p.1 <= a.1.max(b.1) + EPS
}

/// Whether `p` is inside the polygon (even-odd rule); a point on an edge counts as inside, so
/// an object standing exactly on a zone's border is in it.
pub fn point_in_polygon(p: Point, polygon: &[Point]) -> bool {
    if polygon.len() < 3 {
        return false;
    }
    let mut inside = false;
    let mut j = polygon.len() - 1;
    for i in 0..polygon.len() {
        let (a, b) = (polygon[i], polygon[j]);
        if on_segment(a, b, p) {
            return true;
        }
        if (a.1 > p.1) != (b.1 > p.1) {
            let x_at = a.0 + (p.1 - a.1) * (b.0 - a.0) / (b.1 - a.1);
            if p.0 < x_at {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// Whether segments `p1 → p2` and `q1 → q2` share a point (touching and collinear overlap
/// included).
pub fn segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool {
    let d1 = cross(q1, q2, p1);
    let d2 = cross(q1, q2, p2);
    let d3 = cross(p1, p2, q1);
    let d4 = cross(p1, p2, q2);
    let straddle = |a: f64, b: f64| (a > EPS && b < -EPS) || (a < -EPS && b > EPS);
    if straddle(d1, d2) && straddle(d3, d4) {
        return true;
    }
    on_segment(q1, q2, p1)
        || on_segment(q1, q2, p2)
        || on_segment(p1, p2, q1)
        || on_segment(p1, p2, q2)
}

/// Which way a movement `from → to` crosses the line `a → b`, if it does: `Some(true)` from the
/// right side of `a → b` to its left (`ab`), `Some(false)` the other way (`ba`). Touching the line
/// without going to the other side is not a crossing; a move that starts on the line counts from
/// the side it leaves towards.
pub fn crossing(a: Point, b: Point, from: Point, to: Point) -> Option<bool> {
    let (s1, s2) = (cross(a, b, from), cross(a, b, to));
    if !segments_intersect(a, b, from, to)
        || s2.abs() <= EPS
        || s1.signum() == s2.signum() && s1.abs() > EPS
    {
        return None;
    }
    Some(s2 > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const SQUARE: [Point; 4] = [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)];
    /// A "U": concave, with a notch from the top between x 0.4 and 0.6 down to y 0.6.
    const U: [Point; 8] = [
        (0.2, 0.2),
        (0.4, 0.2),
        (0.4, 0.6),
        (0.6, 0.6),
        (0.6, 0.2),
        (0.8, 0.2),
        (0.8, 0.8),
        (0.2, 0.8),
    ];

    #[test]
    fn points_in_convex_concave_and_degenerate_polygons() {
        assert!(point_in_polygon((0.5, 0.5), &SQUARE));
        assert!(!point_in_polygon((0.1, 0.5), &SQUARE));
        assert!(
            point_in_polygon((0.2, 0.5), &SQUARE),
            "on an edge is inside"
        );
        assert!(
            point_in_polygon((0.8, 0.8), &SQUARE),
            "on a corner is inside"
        );
        assert!(point_in_polygon((0.3, 0.3), &U));
        assert!(!point_in_polygon((0.5, 0.4), &U), "in the notch");
        assert!(point_in_polygon((0.5, 0.7), &U), "below the notch");
        assert!(
            !point_in_polygon((0.5, 0.5), &[(0.1, 0.1), (0.9, 0.9)]),
            "two points enclose nothing"
        );
        let flat = [(0.1, 0.1), (0.5, 0.5), (0.9, 0.9)];
        assert!(
            !point_in_polygon((0.5, 0.6), &flat),
            "a flat polygon encloses nothing off its line"
        );
    }

    #[test]
    fn segment_intersections() {
        assert!(
            segments_intersect((0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)),
            "crossing"
        );
        assert!(
            segments_intersect((0.0, 0.0), (0.5, 0.5), (0.5, 0.5), (1.0, 0.0)),
            "touching at an end point"
        );
        assert!(
            segments_intersect((0.0, 0.0), (0.6, 0.0), (0.4, 0.0), (1.0, 0.0)),
            "collinear overlap"
        );
        assert!(
            !segments_intersect((0.0, 0.0), (0.3, 0.0), (0.4, 0.0), (1.0, 0.0)),
            "collinear apart"
        );
        assert!(
            !segments_intersect((0.0, 0.0), (1.0, 0.0), (0.0, 0.1), (1.0, 0.1)),
            "parallel"
        );
    }

    #[test]
    fn crossing_directions() {
        let (a, b) = ((0.0, 0.5), (1.0, 0.5));
        let up = crossing(a, b, (0.5, 0.6), (0.5, 0.4));
        let down = crossing(a, b, (0.5, 0.4), (0.5, 0.6));
        assert!(up.is_some() && down.is_some() && up != down);
        assert_eq!(
            crossing(a, b, (0.5, 0.4), (0.5, 0.45)),
            None,
            "stays on one side"
        );
        assert_eq!(
            crossing(a, b, (0.5, 0.4), (0.5, 0.5)),
            None,
            "reaching the line is not crossing it"
        );
        assert_eq!(
            crossing(a, b, (1.5, 0.4), (1.5, 0.6)),
            None,
            "beyond the segment's end"
        );
    }

    /// Brute-force oracle: a point is inside when a dense ray to the right crosses edges an odd
    /// number of times, sampled far from vertices; compared on random points and polygons.
    #[test]
    fn point_in_polygon_agrees_with_an_oracle() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let n = rng.random_range(3..9);
            // A star-shaped polygon around the centre is simple, convex or not.
            let mut angles: Vec<f64> = (0..n)
                .map(|_| rng.random_range(0.0..std::f64::consts::TAU))
                .collect();
            angles.sort_by(f64::total_cmp);
            let poly: Vec<Point> = angles
                .iter()
                .map(|a| {
                    let r = rng.random_range(0.1..0.45);
                    (0.5 + r * a.cos(), 0.5 + r * a.sin())
                })
                .collect();
            for _ in 0..50 {
                let p = (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0));
                assert_eq!(
                    point_in_polygon(p, &poly),
                    oracle(p, &poly),
                    "{p:?} in {poly:?}"
                );
            }
        }
    }

    fn oracle(p: Point, poly: &[Point]) -> bool {
        // Count crossings of the horizontal ray to x = 2 with every edge, via segment intersection.
        let far = (2.0, p.1 + 1e-9);
        let mut hits = 0;
        for i in 0..poly.len() {
            let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
            if segments_intersect(p, far, a, b) {
                hits += 1;
            }
        }
        hits % 2 == 1
    }
}
