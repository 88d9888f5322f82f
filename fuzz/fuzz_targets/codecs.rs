//! Shared by the codec targets: feed bytes to a line buffer in pieces whose sizes the input
//! chooses, polling the decoder after each piece until it has nothing more.
use devices::codec::lines::LineBuffer;

pub fn feed<T>(data: &[u8], mut poll: impl FnMut(&mut LineBuffer) -> Option<T>) {
    let (split, rest) = data.split_first().map_or((7u8, data), |(a, b)| (*a, b));
    let step = usize::from(split % 31) + 1;
    let mut buf = LineBuffer::new();
    for chunk in rest.chunks(step) {
        buf.push(chunk);
        let mut guard = 0;
        while poll(&mut buf).is_some() {
            guard += 1;
            if guard > 100_000 {
                panic!("decoder loops without consuming input");
            }
        }
    }
}
