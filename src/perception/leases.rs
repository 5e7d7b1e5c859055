//! Task leases: which worker analyses which task.
//!
//! Acquiring is renewing. The tasks are shared among the *live* workers of one credential: a
//! worker is live while its last lease call is younger than its TTL, and every call records it
//! with the task types it asked for (the upstream kernel only recorded workers on the legacy task
//! list, so the first worker to lease took everything). Every call computes the same split: the
//! active tasks in id order, each to the live worker able to do it (its task types admit the
//! task's) that has been given the fewest so far, ties to the lowest worker id. So workers of
//! different task types under one token each get all of theirs, and workers of the same types
//! get equal shares. A worker renews the tasks of its share that are free or already its own and
//! lets go of the others, so after one renewal round every task sits with its owner. A worker
//! that stops renewing loses its tasks when its leases expire; one that releases its lease leaves
//! the share at once. Expiry is a predicate, not a reaper.

use rusqlite::{Connection, OptionalExtension, params};

/// A lease held by a credential on a task.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub task_id: String,
    pub lease_id: String,
    pub credential: String,
    pub worker_id: String,
    pub expires_at_ms: i64,
}

/// Who asks for a lease, and for how long.
#[derive(Clone, Debug)]
pub struct LeaseRequest<'a> {
    pub credential: &'a str,
    pub worker_id: &'a str,
    /// The id this call's leases get (every renewal issues a new one).
    pub lease_id: &'a str,
    pub ttl_ms: i64,
    pub max_tasks: usize,
    pub now_ms: i64,
    /// The task types this worker asked for; `None`: every type.
    pub task_types: Option<&'a [String]>,
}

/// An active task as the split sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveTask {
    pub id: String,
    pub task_type: String,
}

/// Acquires or renews this worker's share of `active` (every active task, sorted by id); returns
/// the ids leased.
pub fn acquire(
    c: &Connection,
    req: &LeaseRequest<'_>,
    active: &[ActiveTask],
) -> rusqlite::Result<Vec<String>> {
    let LeaseRequest {
        credential,
        worker_id,
        lease_id,
        ttl_ms,
        max_tasks,
        now_ms,
        task_types,
    } = *req;
    let types_json = task_types.map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".into()));
    c.execute(
        "INSERT INTO workers (credential, worker_id, last_seen_ms, ttl_ms, lease_id, task_types)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (credential, worker_id)
         DO UPDATE SET last_seen_ms = ?3, ttl_ms = ?4, lease_id = ?5, task_types = ?6",
        params![credential, worker_id, now_ms, ttl_ms, lease_id, types_json],
    )?;
    c.execute(
        "DELETE FROM workers WHERE last_seen_ms + ttl_ms < ?1",
        [now_ms - 3_600_000],
    )?;
    let mut stmt = c.prepare_cached(
        "SELECT worker_id, task_types FROM workers
         WHERE credential = ?1 AND last_seen_ms + ttl_ms > ?2 ORDER BY worker_id",
    )?;
    let live: Vec<(String, Option<Vec<String>>)> = stmt
        .query_map(params![credential, now_ms], |r| {
            let types: Option<String> = r.get(1)?;
            // A filter that does not parse admits nothing rather than everything.
            let types = types.map(|t| serde_json::from_str(&t).unwrap_or_default());
            Ok((r.get(0)?, types))
        })?
        .collect::<Result<_, _>>()?;
    let share: Vec<&String> = split(&live, active)
        .into_iter()
        .filter(|(_, owner)| *owner == worker_id)
        .map(|(task, _)| task)
        .collect();

    // Let go of what is no longer this worker's, so its owner can take it now.
    let mut held =
        c.prepare_cached("SELECT task_id FROM leases WHERE credential = ?1 AND worker_id = ?2")?;
    let holding: Vec<String> = held
        .query_map(params![credential, worker_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for task in holding.iter().filter(|t| !share.contains(t)) {
        c.execute(
            "DELETE FROM leases WHERE task_id = ?1 AND credential = ?2 AND worker_id = ?3",
            params![task, credential, worker_id],
        )?;
    }

    let mut leased = Vec::new();
    for task in share {
        if leased.len() >= max_tasks {
            break;
        }
        let existing: Option<(String, String, i64)> = c
            .query_row(
                "SELECT credential, worker_id, expires_at_ms FROM leases WHERE task_id = ?1",
                [task],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let free = match &existing {
            None => true,
            Some((cred, worker, expires)) => {
                *expires <= now_ms || (cred == credential && worker == worker_id)
            }
        };
        if !free {
            continue;
        }
        let same_holder = existing.as_ref().is_some_and(|(cred, worker, exp)| {
            cred == credential && worker == worker_id && *exp > now_ms
        });
        c.execute(
            "INSERT INTO leases (task_id, lease_id, credential, worker_id, acquired_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (task_id) DO UPDATE SET lease_id = ?2, credential = ?3, worker_id = ?4,
                 acquired_at_ms = CASE WHEN ?7 THEN acquired_at_ms ELSE ?5 END, expires_at_ms = ?6",
            params![task, lease_id, credential, worker_id, now_ms, now_ms + ttl_ms, same_holder],
        )?;
        leased.push(task.clone());
    }
    // What this worker still holds under an older id (its share beyond max_tasks) goes too: a
    // release of this call's id must release everything the worker has.
    c.execute(
        "DELETE FROM leases WHERE credential = ?1 AND worker_id = ?2 AND lease_id != ?3",
        params![credential, worker_id, lease_id],
    )?;
    Ok(leased)
}

/// Every task of `active` that some live worker can do, with its owner: each task in order to the
/// capable worker given the fewest so far, ties to the first (lowest id).
fn split<'t>(
    live: &'t [(String, Option<Vec<String>>)],
    active: &'t [ActiveTask],
) -> Vec<(&'t String, &'t str)> {
    let mut given = vec![0usize; live.len()];
    let mut owners = Vec::new();
    for task in active {
        let capable = live
            .iter()
            .enumerate()
            .filter(|(_, (_, types))| types.as_ref().is_none_or(|t| t.contains(&task.task_type)));
        if let Some((i, (worker, _))) = capable.min_by_key(|(i, _)| given[*i]) {
            given[i] += 1;
            owners.push((&task.id, worker.as_str()));
        }
    }
    owners
}

/// Releases every task of a lease id held by `credential`, and takes the worker whose last lease
/// call issued it out of the share, so the others take its tasks on their next renewal instead
/// of after its TTL. Idempotent; a lease id since renewed releases nothing.
pub fn release(c: &Connection, credential: &str, lease_id: &str) -> rusqlite::Result<usize> {
    c.execute(
        "DELETE FROM workers WHERE lease_id = ?1 AND credential = ?2",
        params![lease_id, credential],
    )?;
    c.execute(
        "DELETE FROM leases WHERE lease_id = ?1 AND credential = ?2",
        params![lease_id, credential],
    )
}

/// The live lease `credential` holds on `task_id`, if any.
pub fn live_lease(
    c: &Connection,
    task_id: &str,
    credential: &str,
    now_ms: i64,
) -> rusqlite::Result<Option<Lease>> {
    c.query_row(
        "SELECT task_id, lease_id, credential, worker_id, expires_at_ms FROM leases
         WHERE task_id = ?1 AND credential = ?2 AND expires_at_ms > ?3",
        params![task_id, credential, now_ms],
        |r| {
            Ok(Lease {
                task_id: r.get(0)?,
                lease_id: r.get(1)?,
                credential: r.get(2)?,
                worker_id: r.get(3)?,
                expires_at_ms: r.get(4)?,
            })
        },
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(include_str!("../../migrations/0003_perception.sql"))
            .unwrap();
        c.execute_batch(include_str!("../../migrations/0014_worker_lease.sql"))
            .unwrap();
        c
    }

    fn tasks(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("cam{i}:motion:sub")).collect()
    }

    fn typed(ids: &[String]) -> Vec<ActiveTask> {
        let mut active: Vec<ActiveTask> = ids
            .iter()
            .map(|id| ActiveTask {
                id: id.clone(),
                task_type: id.split(':').nth(1).unwrap().to_string(),
            })
            .collect();
        active.sort_by(|a, b| a.id.cmp(&b.id));
        active
    }

    /// Leases for `worker` (every task type) at `now_ms`; the lease id is `l<now_ms>`.
    fn take(
        c: &Connection,
        credential: &str,
        worker: &str,
        now_ms: i64,
        all: &[String],
    ) -> Vec<String> {
        take_types(c, credential, worker, None, now_ms, all)
    }

    fn take_types(
        c: &Connection,
        credential: &str,
        worker: &str,
        types: Option<&[&str]>,
        now_ms: i64,
        all: &[String],
    ) -> Vec<String> {
        let lease_id = format!("l{now_ms}");
        let types: Option<Vec<String>> = types.map(|t| t.iter().map(|s| s.to_string()).collect());
        let req = LeaseRequest {
            credential,
            worker_id: worker,
            lease_id: &lease_id,
            ttl_ms: 60_000,
            max_tasks: 512,
            now_ms,
            task_types: types.as_deref(),
        };
        acquire(c, &req, &typed(all)).unwrap()
    }

    #[test]
    fn workers_of_different_task_types_under_one_token_each_get_all_of_theirs() {
        let c = db();
        let all: Vec<String> = [
            "a:motion:sub",
            "b:motion:sub",
            "a:people:main",
            "b:people:main",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let motion = |now| take_types(&c, "tok_1", "m", Some(&["motion"]), now, &all);
        let people = |now| take_types(&c, "tok_1", "p", Some(&["people"]), now, &all);
        assert_eq!(motion(0), vec!["a:motion:sub", "b:motion:sub"]);
        assert_eq!(
            people(10),
            vec!["a:people:main", "b:people:main"],
            "the motion worker does not count against the people tasks"
        );
        assert_eq!(motion(20), vec!["a:motion:sub", "b:motion:sub"]);
        // A worker of every type joins: in id order each task goes to the capable worker given
        // the fewest, so z takes the second motion task, which m lets go of at its next renewal.
        assert_eq!(take(&c, "tok_1", "z", 30, &all), Vec::<String>::new());
        assert_eq!(motion(40), vec!["a:motion:sub"]);
        assert_eq!(people(50), vec!["a:people:main", "b:people:main"]);
        assert_eq!(take(&c, "tok_1", "z", 60, &all), vec!["b:motion:sub"]);
    }

    #[test]
    fn two_workers_share_and_a_silent_one_loses_its_tasks_at_expiry() {
        let c = db();
        let all = tasks(4);
        assert_eq!(
            take(&c, "tok_1", "a", 0, &all).len(),
            4,
            "alone, a takes everything"
        );
        assert!(
            take(&c, "tok_1", "b", 1000, &all).is_empty(),
            "b's share is still held by a"
        );
        assert_eq!(
            take(&c, "tok_1", "a", 2000, &all),
            vec![all[0].clone(), all[2].clone()],
            "a lets go of b's share"
        );
        assert_eq!(
            take(&c, "tok_1", "b", 3000, &all),
            vec![all[1].clone(), all[3].clone()]
        );
        // a stops renewing: once its leases and its liveness expire, b takes everything.
        assert_eq!(take(&c, "tok_1", "b", 62_001, &all).len(), 4);
    }

    #[test]
    fn a_released_worker_leaves_the_share_at_once() {
        let c = db();
        let all = tasks(2);
        assert_eq!(take(&c, "tok_1", "a", 0, &all).len(), 2);
        assert_eq!(release(&c, "tok_1", "l0").unwrap(), 2);
        assert_eq!(
            take(&c, "tok_1", "b", 10, &all).len(),
            2,
            "a released its lease: b is alone, not sharing with a until a's TTL runs out"
        );
        assert_eq!(
            take(&c, "tok_1", "a", 20, &all).len(),
            0,
            "a is back: b holds the tasks"
        );
        assert_eq!(
            release(&c, "tok_1", "l0").unwrap(),
            0,
            "a stale lease id releases nothing"
        );
        assert_eq!(
            take(&c, "tok_1", "b", 30, &all),
            vec![all[1].clone()],
            "a is live again: b lets go of a's share"
        );
    }

    #[test]
    fn another_credential_cannot_take_a_live_lease_and_release_is_scoped() {
        let c = db();
        let all = tasks(1);
        assert_eq!(take(&c, "tok_1", "a", 0, &all).len(), 1);
        assert!(take(&c, "tok_2", "x", 10, &all).is_empty());
        assert_eq!(release(&c, "tok_2", "l0").unwrap(), 0, "not its lease");
        assert_eq!(release(&c, "tok_1", "l0").unwrap(), 1);
        assert_eq!(release(&c, "tok_1", "l0").unwrap(), 0, "idempotent");
        assert_eq!(take(&c, "tok_2", "x", 20, &all).len(), 1);
        assert!(live_lease(&c, &all[0], "tok_2", 30).unwrap().is_some());
        assert!(live_lease(&c, &all[0], "tok_1", 30).unwrap().is_none());
    }
}
