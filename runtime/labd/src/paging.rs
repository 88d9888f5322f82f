//! Pages of list replies: however long a list grows (runs, interventions, the schedule), no
//! reply passes the gRPC message limit. A page token says where the next page starts.

/// Items in a page when the caller does not say, and at most.
pub const DEFAULT_PAGE: usize = 200;
pub const MAX_PAGE: usize = 1000;

/// The page size for a requested `page_size` (0: the default).
pub fn size(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    }
}

/// The page of `items` (in the order of `key`, a creation time and an id) after `token`, and
/// the token of the next page (empty on the last). Keyed tokens hold however the list changes
/// between pages.
pub fn after_key<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> (i64, &str),
    page_size: u32,
    token: &str,
) -> Result<(Vec<T>, String), String> {
    let after = if token.is_empty() {
        None
    } else {
        let (at, id) = token.split_once(':').ok_or_else(bad_token)?;
        Some((at.parse::<i64>().map_err(|_| bad_token())?, id.to_string()))
    };
    let size = size(page_size);
    let mut page: Vec<T> =
        items.into_iter().filter(|x| after.as_ref().is_none_or(|(at, id)| key(x) > (*at, id.as_str()))).collect();
    page.sort_by(|a, b| key(a).cmp(&key(b)));
    let more = page.len() > size;
    page.truncate(size);
    let next = match page.last() {
        Some(last) if more => {
            let (at, id) = key(last);
            format!("{at}:{id}")
        }
        _ => String::new(),
    };
    Ok((page, next))
}

/// The page of `items` at the offset `token` says: for views with no stable key (the
/// schedule, rebuilt at every repair), where a change between pages may shift an item.
pub fn by_offset<T>(items: Vec<T>, page_size: u32, token: &str) -> Result<(Vec<T>, String), String> {
    let from = if token.is_empty() {
        0
    } else {
        token.strip_prefix('@').and_then(|n| n.parse().ok()).ok_or_else(bad_token)?
    };
    let size = size(page_size);
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(from).take(size).collect();
    let next = if from + page.len() < total { format!("@{}", from + page.len()) } else { String::new() };
    Ok((page, next))
}

fn bad_token() -> String {
    "page_token is not one a previous page returned; start again without it".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_pages_cover_everything_once_even_when_items_arrive_between_pages() {
        let mut items: Vec<(i64, String)> = (0..450).map(|i| (i / 3, format!("x{i:04}"))).collect();
        fn key(x: &(i64, String)) -> (i64, &str) {
            (x.0, &x.1)
        }
        let (first, token) = after_key(items.clone(), key, 0, "").unwrap();
        assert_eq!(first.len(), DEFAULT_PAGE);
        items.push((0, "a-new-one-before".into())); // lands before the token: not repeated
        let (second, token) = after_key(items.clone(), key, 200, &token).unwrap();
        let (third, token) = after_key(items.clone(), key, 200, &token).unwrap();
        assert_eq!((second.len(), third.len(), token.as_str()), (200, 50, ""));
        let mut seen: Vec<String> = first.into_iter().chain(second).chain(third).map(|x| x.1).collect();
        seen.dedup();
        assert_eq!(seen.len(), 450);
        assert!(after_key(items.clone(), key, 10, "garbage").unwrap_err().contains("start again"));
        assert_eq!(after_key(items, key, 5000, "").unwrap().0.len(), MAX_PAGE.min(451));
    }

    #[test]
    fn offset_pages() {
        let (p, t) = by_offset((0..5).collect(), 2, "").unwrap();
        assert_eq!((p, t.as_str()), (vec![0, 1], "@2"));
        let (p, t) = by_offset((0..5).collect(), 2, "@4").unwrap();
        assert_eq!((p, t.as_str()), (vec![4], ""));
        assert!(by_offset((0..5).collect::<Vec<i32>>(), 2, "4").is_err());
    }
}
